"""File-transfer benchmark: speed and server memory of a large upload and download.

What it measures, for each storage backend (`local`, and `s3` against moto's server,
started here on a free port, its bucket made with boto3): a real
`keel serve --workers 1` in a temporary data folder, with that backend and
`KEEL_MAX_UPLOAD_BYTES` raised above the test file, whose first admin
(`KEEL_FIRST_ADMIN_EMAIL`/`_PASSWORD`) signs in. One small warm-up upload and download
(2 MiB: imports, first allocations) is thrown away; then `ROUNDS` times:

1. (local only) `cp` of the test file to a file beside the storage folder (the same file
   system), timed, then deleted; then `cp` + `sync <copy>` (the copy flushed to disk, as
   Keel's upload is before it answers), timed, deleted;
2. upload of the test file (`POST /api/v1/files`, multipart field `file`, declared
   image/png) by a streaming client, while a thread samples the server's resident memory
   (VmRSS from /proc, every 50 ms) and the kernel's own peak (VmHWM, reset just before)
   catches anything between samples; the answer's size and sha256 must be the file's;
3. download of it (`GET /api/v1/files/{id}/content`) to /dev/null, sampled the same way;
   then, untimed, once more through httpx, hashed as it streams: the sha256 must match
   (hashing inside the timed download made the client, not the server, the bottleneck);
4. the file is deleted through the API.

and (local) one last `cp` pair after the last round, so every upload has a `cp` right
before and right after it. With one worker `keel serve` runs Uvicorn in its own process
(`uvicorn.run` forks only for several workers or --reload); the sampler sums the process
and any children anyway, and the report says how many processes it saw.

The test file is `FILE_MB` MiB (default 1024): the PNG signature, then random bytes,
written in 1 MiB chunks (never held in memory) and fsynced, so no writeback of it falls
into a measurement. It stays in the page cache: the client and `cp` read it from memory.

Reported (Markdown on stdout, progress on stderr): per backend the median upload and
download MB/s over the rounds, and the largest RSS growth (peak minus the RSS right
before the transfer) of any round; the local upload's MB/s over the median `cp` MB/s
(and over `cp` + `sync`), with every `cp` run and its CPU seconds; per transfer the
seconds, MB/s, CPU seconds of the server (split into the event loop's thread and the
others: hashing, file writes), of moto and of the client, and RSS before, peak and
growth. MB = 10^6 bytes. Targets: RSS growth < 64 MB in each direction; local upload /
`cp` >= 0.5. Exit status 1 when a target is missed (a failed check raises: also 1).

Run from the repository root of any clone with Keel's `.venv` (`bash bench/files.sh`
makes it when missing); `curl` must be installed:

    .venv/bin/python bench/files.py
    FILE_MB=256 ROUNDS=1 BACKENDS=local .venv/bin/python bench/files.py

Environment (defaults):
    FILE_MB=1024        the test file's size in MiB
    ROUNDS=3            measured rounds per backend
    BACKENDS="local s3" which backends, in order
    CLIENT=curl         curl (`curl -F file=@...;type=image/png`, downloads `-o /dev/null`:
                        no Python in the client's data path) or httpx (a generator body
                        that wraps the file's 1 MiB chunks in a multipart envelope built
                        here; downloads streamed and thrown away)
    PAUSE=0             seconds to wait before each timed `cp` and transfer. On a VM that
                        hands freed memory back to its host (virtio-balloon free page
                        reporting, as here), writing into pages freed seconds ago is
                        several times faster than into pages handed back; PAUSE=10 makes
                        every step start with the freed pages handed back
    PYSPY=0             1: `py-spy record` (raw collapsed stacks, 100 Hz) the server during
                        every measured transfer; it slows the server, so the figures of
                        such a run are for reading the profile, not for the table
    BENCH_TMPDIR=<the system's temporary folder>   where the test file, the data folders,
                        moto's spooled objects and the copies go (needs ~4x FILE_MB free)

Everything it starts (Keel, moto, py-spy) runs in its own process group and is stopped,
and the temporary folder removed, however the run ends (error, Ctrl-C, SIGTERM). Raw
figures (results.json, per transfer an RSS series, the server and moto logs, profiles)
go to `bench/out/files-<UTC time>/` (ignored by git).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
from keel_bench import (
    API,
    KEEL,
    REPO,
    KeelServer,
    RssSampler,
    Server,
    cpu_seconds,
    free_port,
    load_average,
    loopback_env,
    out,
    out_dir,
    process_tree,
    py_spy,
    reset_peak_rss,
    say,
    sign_in,
    tree_hwm_kib,
    tree_rss_kib,
)

MIB = 1024 * 1024
CHUNK = MIB
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ADMIN = "files-bench@example.com"
PASSWORD = "bench passphrase 2026"  # noqa: S105 - a throwaway account on a throwaway server
BUCKET = "keel-bench-files"
REGION = "us-east-1"
# Any non-empty strings: moto accepts every credential, and these are no one's.
AWS_KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
RSS_TARGET_MB = 64.0
CP_RATIO_TARGET = 0.5
WARMUP_BYTES = 2 * MIB
SAMPLE_SECONDS = 0.05

T = TypeVar("T")


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(143)  # unwinds the `with` blocks: servers stopped, files removed


def _mb(nbytes: float) -> float:
    return nbytes / 1e6


def _children_cpu() -> float:
    """CPU seconds of the waited-for child processes (cp, curl) so far."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


# --- settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    file_mb: int
    rounds: int
    backends: tuple[str, ...]
    client: str
    pyspy: bool
    pause: float
    tmp_root: Path

    @classmethod
    def from_env(cls) -> Config:
        backends = tuple(os.environ.get("BACKENDS", "local s3").replace(",", " ").split())
        client = os.environ.get("CLIENT", "curl")
        config = cls(
            file_mb=int(os.environ.get("FILE_MB", "1024")),
            rounds=int(os.environ.get("ROUNDS", "3")),
            backends=backends,
            client=client,
            pyspy=os.environ.get("PYSPY", "0") == "1",
            pause=float(os.environ.get("PAUSE", "0")),
            tmp_root=Path(os.environ.get("BENCH_TMPDIR") or tempfile.gettempdir()),
        )
        if config.file_mb < 1 or config.rounds < 1:
            raise SystemExit("FILE_MB and ROUNDS must be at least 1")
        if not backends or set(backends) - {"local", "s3"}:
            raise SystemExit(f"BACKENDS takes local and/or s3, not {backends}")
        if client not in {"curl", "httpx"}:
            raise SystemExit(f"CLIENT is curl or httpx, not {client!r}")
        return config

    @property
    def file_bytes(self) -> int:
        return self.file_mb * MIB


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed (Debian/Ubuntu: apt-get install {name})")
    return found


def _machine(tmp_root: Path) -> str:
    """Cores, memory, kernel, Python, the temporary folder's file system, the commit."""
    kib = int(Path("/proc/meminfo").read_text().split()[1])
    found = subprocess.run(  # noqa: S603 - fixed commands
        [_tool("df"), "--output=fstype", str(tmp_root)], capture_output=True, text=True, check=False
    ).stdout.split()
    fstype = found[-1] if found else "?"
    commit = subprocess.run(  # noqa: S603
        [_tool("git"), "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(  # noqa: S603
        [_tool("git"), "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "src"], check=False
    ).returncode
    python = ".".join(str(part) for part in sys.version_info[:3])
    return (
        f"{os.cpu_count()} cores, {kib / MIB:.0f} GiB, Linux {os.uname().release}, "
        f"Python {python}, temporary folder on {fstype}, commit {commit or '?'}"
        + (" (src modified)" if dirty else "")
    )


# --- the test file and cp ---------------------------------------------------------------


def make_test_file(path: Path, size: int) -> str:
    """The PNG signature and random bytes, `size` in all, written in 1 MiB chunks and
    fsynced; its sha256."""
    hasher = hashlib.sha256()
    with path.open("xb") as handle:
        remaining = size
        first = True
        while remaining > 0:
            chunk = os.urandom(min(CHUNK, remaining))
            if first:
                chunk = (PNG_SIGNATURE + chunk)[: len(chunk)]
                first = False
            handle.write(chunk)
            hasher.update(chunk)
            remaining -= len(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return hasher.hexdigest()


@dataclass
class CopyRun:
    synced: bool
    seconds: float
    cpu: float  # of cp (and sync): mostly the kernel's, copying into the page cache

    def mb_s(self, size: int) -> float:
        return _mb(size) / self.seconds


def time_cp(source: Path, target: Path, *, synced: bool) -> CopyRun:
    """`cp source target` (then `sync target` when `synced`), timed; the copy is removed."""
    commands = [[_tool("cp"), str(source), str(target)]]
    if synced:
        commands.append([_tool("sync"), str(target)])
    cpu = _children_cpu()
    started = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True)  # noqa: S603 - fixed commands
    seconds = time.perf_counter() - started
    cpu = _children_cpu() - cpu
    target.unlink()  # unwritten pages of an unsynced copy are dropped, not written back
    return CopyRun(synced, seconds, cpu)


# --- the servers ------------------------------------------------------------------------


class MotoServer(Server):
    """moto's S3 server on a free port, in its own process group."""

    name = "moto"
    ready_path = "/moto-api/"

    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        port = free_port()
        python = str(REPO / ".venv" / "bin" / "python")
        command = [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        super().__init__(command, port, env, cwd, log)


def base_env(tmp: Path) -> dict[str, str]:
    """The caller's environment without KEEL_* or AWS_* (no .env, no real account)."""
    env = loopback_env("KEEL_", "AWS_")
    env.update(AWS_KEYS)
    env["TMPDIR"] = str(tmp)  # moto spools objects to files here
    return env


def keel_env(
    base: dict[str, str], data_dir: Path, backend: str, max_bytes: int, moto_url: str | None
) -> dict[str, str]:
    env = dict(base)
    env.update(
        KEEL_ENV="development",
        KEEL_DATA_DIR=str(data_dir),
        KEEL_LOG_FORMAT="json",
        KEEL_MAX_UPLOAD_BYTES=str(max_bytes),
        KEEL_FIRST_ADMIN_EMAIL=ADMIN,
        KEEL_FIRST_ADMIN_PASSWORD=PASSWORD,
        KEEL_STORAGE_BACKEND=backend,
        KEEL_STORAGE_LOCAL_PATH=str(data_dir / "files"),
    )
    if backend == "s3":
        assert moto_url is not None  # noqa: S101 - s3 runs beside moto
        env.update(
            KEEL_STORAGE_S3_BUCKET=BUCKET,
            KEEL_STORAGE_S3_ENDPOINT_URL=moto_url,
            KEEL_STORAGE_S3_REGION=REGION,
        )
    return env


def create_bucket(moto_url: str) -> None:
    import boto3  # type: ignore[import-untyped]  # noqa: PLC0415 - only s3 needs it

    client = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id=AWS_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=BUCKET)


@contextlib.contextmanager
def moto_if(backend: str, env: dict[str, str], cwd: Path, log: Path) -> Iterator[Server | None]:
    if backend != "s3":
        yield None
        return
    with MotoServer(env, cwd, log) as moto:
        create_bucket(moto.base_url)
        say(f"moto on {moto.base_url}, bucket {BUCKET}")
        yield moto


# --- the clients ------------------------------------------------------------------------


def _curl_base(header_file: Path) -> list[str]:
    # The token from a file, not the command line; no proxy; no `Expect: 100-continue`.
    return [_tool("curl"), "-sS", "--noproxy", "*", "-H", f"@{header_file}", "-H", "Expect:"]


def upload_curl(base_url: str, header_file: Path, path: Path) -> dict[str, Any]:
    answer_file = path.with_name("upload-answer.json")
    done = subprocess.run(  # noqa: S603 - fixed command
        [
            *_curl_base(header_file),
            "-F",
            f"file=@{path};type=image/png;filename=bench.png",
            "-o",
            str(answer_file),
            "-w",
            "%{http_code}",
            f"{base_url}{API}/files",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    body = answer_file.read_text() if answer_file.exists() else ""
    answer_file.unlink(missing_ok=True)
    if done.returncode != 0 or done.stdout.strip() != "201":
        raise RuntimeError(
            f"upload failed: curl {done.returncode}, HTTP {done.stdout.strip()}: "
            f"{done.stderr.strip()} {body[:500]}"
        )
    answer: dict[str, Any] = json.loads(body)
    return answer


def upload_httpx(base_url: str, token: str, path: Path) -> dict[str, Any]:
    boundary = secrets.token_hex(16)
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="bench.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = path.stat().st_size

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
        yield tail

    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + size + len(tail)),
    }
    with httpx.Client(timeout=600.0, trust_env=False) as client:
        answer = client.post(f"{base_url}{API}/files", content=body(), headers=headers)
    if answer.status_code != 201:
        raise RuntimeError(f"upload failed: HTTP {answer.status_code}: {answer.text[:500]}")
    found: dict[str, Any] = answer.json()
    return found


def download_curl(url: str, header_file: Path) -> int:
    """The body to /dev/null; its size."""
    done = subprocess.run(  # noqa: S603 - fixed command
        [*_curl_base(header_file), "--fail", "-o", os.devnull, "-w", "%{size_download}", url],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"download failed: curl {done.returncode}: {done.stderr.strip()}")
    return int(done.stdout.strip())


def download_httpx(url: str, token: str, *, hasher: Any = None) -> int:
    """The body, thrown away (or fed to `hasher`) as it arrives; its size."""
    size = 0
    with (
        httpx.Client(timeout=600.0, trust_env=False) as client,
        client.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        if answer.status_code != 200:
            raise RuntimeError(f"download failed: HTTP {answer.status_code}")
        for chunk in answer.iter_raw(CHUNK):
            size += len(chunk)
            if hasher is not None:
                hasher.update(chunk)
    return size


def delete_file(base_url: str, token: str, file_id: str) -> None:
    with httpx.Client(base_url=base_url, timeout=60.0, trust_env=False) as client:
        answer = client.delete(
            f"{API}/files/{file_id}", headers={"Authorization": f"Bearer {token}"}
        )
        if answer.status_code != 204:
            raise RuntimeError(f"delete failed: HTTP {answer.status_code}: {answer.text[:300]}")


class Client:
    """The chosen client, with the current token."""

    def __init__(self, kind: str, base_url: str, folder: Path) -> None:
        self.kind = kind
        self.base_url = base_url
        self.header_file = folder / "auth-header"
        self.token = ""

    def sign_in(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False) as client:
            self.token = sign_in(client, ADMIN)
        self.header_file.write_text(f"Authorization: Bearer {self.token}\n")
        self.header_file.chmod(0o600)

    def upload(self, path: Path) -> dict[str, Any]:
        if self.kind == "curl":
            return upload_curl(self.base_url, self.header_file, path)
        return upload_httpx(self.base_url, self.token, path)

    def url(self, file_id: str) -> str:
        return f"{self.base_url}{API}/files/{file_id}/content"

    def download(self, file_id: str) -> int:
        if self.kind == "curl":
            return download_curl(self.url(file_id), self.header_file)
        return download_httpx(self.url(file_id), self.token)

    def sha256(self, file_id: str) -> tuple[int, str]:
        """Download again, hashing the bytes as they arrive: (size, sha256)."""
        hasher = hashlib.sha256()
        size = download_httpx(self.url(file_id), self.token, hasher=hasher)
        return size, hasher.hexdigest()

    def delete(self, file_id: str) -> None:
        delete_file(self.base_url, self.token, file_id)


# --- measuring --------------------------------------------------------------------------


@dataclass
class Transfer:
    """One measured upload or download."""

    backend: str
    round: int
    direction: str
    nbytes: int
    seconds: float = 0.0
    rss_before_kib: int = 0
    rss_peak_sampled_kib: int = 0
    rss_peak_hwm_kib: int | None = None
    samples: int = 0
    processes: int = 1
    server_cpu: float = 0.0
    # The event loop's thread (the process's main thread) and the others (worker
    # threads: hashing, file writes; aiosqlite's; password hashing).
    loop_cpu: float = 0.0
    threads_cpu: float = 0.0
    moto_cpu: float | None = None
    client_cpu: float = 0.0

    @property
    def mb_s(self) -> float:
        return _mb(self.nbytes) / self.seconds

    @property
    def rss_peak_kib(self) -> int:
        return max(self.rss_peak_sampled_kib, self.rss_peak_hwm_kib or 0)

    @property
    def growth_mb(self) -> float:
        return _mb((self.rss_peak_kib - self.rss_before_kib) * 1024)


def _own_cpu() -> float:
    """CPU seconds of this process and its waited-for children (the client side)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime + _children_cpu()


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`, by thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


@contextlib.contextmanager
def profiled(enabled: bool, pid: int, output: Path) -> Iterator[None]:
    """`py-spy record` of `pid` while the block runs, when asked for."""
    if not enabled:
        yield
        return
    with py_spy([(pid, output)]):
        yield


def measure(
    transfer: Transfer,
    server: KeelServer,
    moto: Server | None,
    action: Callable[[], T],
    folder: Path,
    *,
    pyspy: bool,
    pause: float,
) -> tuple[Transfer, T]:
    """Run `action` (one transfer) while sampling the server's RSS; fill `transfer`."""
    name = f"{transfer.backend}-{transfer.round}-{transfer.direction}"
    with profiled(pyspy, server.pid, folder / f"pyspy-{name}.txt"):
        time.sleep(max(0.5, pause))  # let the last request's work settle
        hwm_reset = reset_peak_rss(server.pid)
        transfer.rss_before_kib = tree_rss_kib(server.pid)
        server_cpu, client_cpu = cpu_seconds(server.pid), _own_cpu()
        threads = thread_cpu(server.pid)
        moto_cpu = cpu_seconds(moto.pid) if moto else 0.0
        with RssSampler(server.pid, SAMPLE_SECONDS) as sampler:
            started = time.perf_counter()
            result = action()
            transfer.seconds = time.perf_counter() - started
        transfer.server_cpu = cpu_seconds(server.pid) - server_cpu
        for tid, seconds in thread_cpu(server.pid).items():
            spent = seconds - threads.get(tid, 0.0)
            if tid == server.pid:
                transfer.loop_cpu = spent
            else:
                transfer.threads_cpu += spent
        transfer.client_cpu = _own_cpu() - client_cpu
        if moto:
            transfer.moto_cpu = cpu_seconds(moto.pid) - moto_cpu
    transfer.rss_peak_sampled_kib = sampler.peak_kib
    transfer.rss_peak_hwm_kib = tree_hwm_kib(server.pid) if hwm_reset else None
    transfer.samples = len(sampler.samples)
    transfer.processes = sampler.max_processes
    with (folder / f"rss-{name}.csv").open("w") as series:
        series.write("seconds,rss_kib\n")
        series.writelines(f"{seconds:.3f},{kib}\n" for seconds, kib in sampler.samples)
    say(
        f"{name}: {transfer.nbytes / MIB:.0f} MiB in {transfer.seconds:.2f} s "
        f"({transfer.mb_s:.0f} MB/s), RSS {transfer.rss_before_kib / 1024:.0f} -> "
        f"{transfer.rss_peak_kib / 1024:.0f} MiB (+{transfer.growth_mb:.1f} MB), "
        f"server CPU {transfer.server_cpu:.1f} s (event loop {transfer.loop_cpu:.1f}, "
        f"other threads {transfer.threads_cpu:.1f})"
        + (f", moto CPU {transfer.moto_cpu:.1f} s" if transfer.moto_cpu is not None else "")
        + f", client CPU {transfer.client_cpu:.1f} s"
    )
    return transfer, result


@dataclass(frozen=True)
class TestFile:
    path: Path
    size: int
    sha256: str

    @classmethod
    def make(cls, path: Path, size: int) -> TestFile:
        return cls(path, size, make_test_file(path, size))


def upload_checked(client: Client, test: TestFile) -> str:
    """Upload `test`; the new file's id, once the answer's size and sha256 match."""
    answer = client.upload(test.path)
    if answer.get("size") != test.size or answer.get("sha256") != test.sha256:
        raise RuntimeError(f"the upload's answer does not match the file: {answer}")
    return str(answer["id"])


def download_checked(client: Client, file_id: str, test: TestFile) -> None:
    """The timed download: to /dev/null, its size checked."""
    size = client.download(file_id)
    if size != test.size:
        raise RuntimeError(f"download: {size} bytes, expected {test.size}")


def verify(client: Client, file_id: str, test: TestFile) -> None:
    """Untimed: the stored bytes, downloaded once more and hashed, are the test file's."""
    size, sha256 = client.sha256(file_id)
    if size != test.size or sha256 != test.sha256:
        raise RuntimeError(
            f"download: {size} bytes, sha256 {sha256}; expected {test.size}, {test.sha256}"
        )


@dataclass
class BackendRun:
    backend: str
    transfers: list[Transfer] = field(default_factory=list)
    copies: list[CopyRun] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)


def run_backend(
    config: Config, backend: str, work: Path, test: TestFile, warmup: TestFile, folder: Path
) -> BackendRun:
    result = BackendRun(backend)
    data_dir = work / f"data-{backend}"
    data_dir.mkdir()
    base = base_env(work)

    def copy_pair() -> None:
        for synced in (False, True):
            time.sleep(config.pause)
            run = time_cp(test.path, data_dir / "cp-copy.bin", synced=synced)
            result.copies.append(run)
            label = "cp + sync" if synced else "cp"
            say(
                f"{label}: {run.seconds:.2f} s ({run.mb_s(test.size):.0f} MB/s), "
                f"CPU {run.cpu:.1f} s"
            )

    with moto_if(backend, base, work, folder / "moto.log") as moto:
        moto_url = moto.base_url if moto else None
        env = keel_env(base, data_dir, backend, test.size + 64 * MIB, moto_url)
        with KeelServer(env, folder / f"server-{backend}.log") as server:
            result.processes = process_tree(server.pid)
            say(f"keel serve ({backend}) on {server.base_url}: processes {result.processes}")
            client = Client(config.client, server.base_url, work)
            client.sign_in()
            file_id = upload_checked(client, warmup)  # thrown away: imports, first allocations
            download_checked(client, file_id, warmup)
            verify(client, file_id, warmup)
            client.delete(file_id)
            for number in range(1, config.rounds + 1):
                if backend == "local":
                    copy_pair()
                client.sign_in()  # tokens live 15 minutes; a slow store could outlast one
                upload, file_id = measure(
                    Transfer(backend, number, "upload", test.size),
                    server,
                    moto,
                    partial(upload_checked, client, test),
                    folder,
                    pyspy=config.pyspy,
                    pause=config.pause,
                )
                download, _ = measure(
                    Transfer(backend, number, "download", test.size),
                    server,
                    moto,
                    partial(download_checked, client, file_id, test),
                    folder,
                    pyspy=config.pyspy,
                    pause=config.pause,
                )
                verify(client, file_id, test)
                result.transfers += [upload, download]
                client.delete(file_id)
            if backend == "local":
                copy_pair()
    return result


# --- the report -------------------------------------------------------------------------


def _range(values: list[float], digits: int = 0) -> str:
    """Median (lowest-highest), as RESULTS.md writes ranges."""
    low, high = (f"{value:.{digits}f}" for value in (min(values), max(values)))
    return f"{statistics.median(values):.{digits}f} ({low}\N{EN DASH}{high})"


def report(config: Config, runs: list[BackendRun], header: str) -> int:
    size = config.file_bytes
    missed = []
    out(f"## Files: {config.file_mb} MiB upload and download")
    out()
    out(f"# {header}")
    out(
        f"# client {config.client}, {config.rounds} round(s), pause {config.pause:g} s, "
        "MB = 10^6 bytes"
    )
    out()
    out(
        "| backend | upload MB/s | download MB/s | RSS growth upload (MB) "
        "| RSS growth download (MB) | target RSS growth < 64 MB |"
    )
    out("| --- | --- | --- | --- | --- | --- |")
    for run in runs:
        ups = [t for t in run.transfers if t.direction == "upload"]
        downs = [t for t in run.transfers if t.direction == "download"]
        up_growth = max(t.growth_mb for t in ups)
        down_growth = max(t.growth_mb for t in downs)
        met = up_growth < RSS_TARGET_MB and down_growth < RSS_TARGET_MB
        if not met:
            missed.append(f"{run.backend}: RSS growth")
        out(
            f"| {run.backend} | {_range([t.mb_s for t in ups])} "
            f"| {_range([t.mb_s for t in downs])} | {up_growth:.1f} | {down_growth:.1f} "
            f"| {'met' if met else 'missed'} |"
        )
    out()
    out("Throughput: median (range) over the rounds; RSS growth: the largest of any round.")
    for run in runs:
        if not run.copies:
            continue
        upload = statistics.median(t.mb_s for t in run.transfers if t.direction == "upload")
        plain = [c.mb_s(size) for c in run.copies if not c.synced]
        synced = [c.mb_s(size) for c in run.copies if c.synced]
        ratio = upload / statistics.median(plain)
        ratio_synced = upload / statistics.median(synced)
        met = ratio >= CP_RATIO_TARGET
        if not met:
            missed.append(f"{run.backend}: upload / cp")
        out()
        out(
            f"{run.backend} upload / cp: **{ratio:.2f}** (target >= {CP_RATIO_TARGET}: "
            f"{'met' if met else 'missed'}); upload {upload:.0f} MB/s, "
            f"cp {_range(plain)} MB/s over {len(plain)} runs; upload / (cp + sync): "
            f"{ratio_synced:.2f}, cp + sync {_range(synced)} MB/s."
        )
        out()
        out(
            "cp runs, in order (seconds, MB/s, CPU seconds of cp and sync): "
            + "; ".join(
                f"{'cp + sync' if c.synced else 'cp'} {c.seconds:.2f} s, {c.mb_s(size):.0f} MB/s, "
                f"{c.cpu:.2f} s"
                for c in run.copies
            )
            + "."
        )
    out()
    out(
        "| backend | round | direction | seconds | MB/s | server CPU s (event loop + "
        "other threads) | moto CPU s | client CPU s | RSS before MiB | RSS peak MiB "
        "| growth MB |"
    )
    out("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        for t in run.transfers:
            moto_cpu = "\N{EN DASH}" if t.moto_cpu is None else f"{t.moto_cpu:.1f}"
            out(
                f"| {t.backend} | {t.round} | {t.direction} | {t.seconds:.2f} | {t.mb_s:.0f} "
                f"| {t.server_cpu:.1f} ({t.loop_cpu:.1f} + {t.threads_cpu:.1f}) "
                f"| {moto_cpu} | {t.client_cpu:.1f} "
                f"| {t.rss_before_kib / 1024:.0f} | {t.rss_peak_kib / 1024:.0f} "
                f"| {t.growth_mb:.1f} |"
            )
    out()
    for run in runs:
        out(
            f"keel serve ({run.backend}): {len(run.processes)} process(es) at start; the "
            f"sampler saw at most {max(t.processes for t in run.transfers)}."
        )
    if missed:
        out()
        out("Missed: " + "; ".join(missed))
    return 1 if missed else 0


def main() -> int:
    if any(arg in {"-h", "--help"} for arg in sys.argv[1:]):
        out(__doc__ or "")
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    config = Config.from_env()
    if not KEEL.exists():
        raise SystemExit(f"{KEEL.relative_to(REPO)} is missing: run `python3 run.py keel --help`")
    for tool in ("curl", "cp", "sync"):
        _tool(tool)
    needed = config.file_bytes * 4 + 512 * MIB
    free = shutil.disk_usage(config.tmp_root).free
    if free < needed:
        raise SystemExit(
            f"{config.tmp_root} has {free / MIB:.0f} MiB free; FILE_MB={config.file_mb} needs "
            f"about {needed / MIB:.0f}: set a smaller FILE_MB or another BENCH_TMPDIR"
        )
    folder = out_dir("files")
    header = _machine(config.tmp_root)
    load_before = load_average()
    say(header)
    say(load_before)
    say(f"raw figures in {folder.relative_to(REPO)}")
    with tempfile.TemporaryDirectory(prefix="keel-bench-files-", dir=config.tmp_root) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        test = TestFile.make(work / "test.png", config.file_bytes)
        warmup = TestFile.make(work / "warmup.png", WARMUP_BYTES)
        say(
            f"test file: {config.file_mb} MiB in {time.perf_counter() - started:.1f} s, "
            f"sha256 {test.sha256[:16]}..."
        )
        runs = [
            run_backend(config, backend, work, test, warmup, folder) for backend in config.backends
        ]
    header += f"; {load_before} at the start, {load_average()} at the end"
    results = {
        "machine": header,
        "config": {**asdict(config), "tmp_root": str(config.tmp_root)},
        "runs": [
            {
                "backend": run.backend,
                "processes": run.processes,
                "copies": [asdict(c) for c in run.copies],
                "transfers": [
                    {**asdict(t), "mb_s": t.mb_s, "growth_mb": t.growth_mb} for t in run.transfers
                ],
            }
            for run in runs
        ],
    }
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return report(config, runs, header)


if __name__ == "__main__":
    sys.exit(main())
