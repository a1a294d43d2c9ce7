"""The soak's client side, in one asyncio process: accounts made, realtime clients
connected and subscribed, then the mixed load for the warm-up and the measured window,
with the load paused at both ends for quiet RSS samples, and the final checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from soak_http import CREATED, Caller, new_client
from soak_ledger import Account, Gate, Newcomer
from soak_others import Admin, MailBox, nap, newcomers, probes
from soak_procs import (
    Memory,
    Process,
    RssSeries,
    cpu_since,
    parse_metrics,
    server_processes,
    snapshot,
)
from soak_realtime import RealtimeClient
from soak_stats import Stats
from soak_tracing import collect, signal_all
from soak_users import VirtualUser
from soak_verify import Checked, verify_realtime, verify_writes

SETTLE_SECONDS = 3.0  # after the load is paused, before RSS is read


@dataclass(frozen=True)
class Plan:
    base_url: str
    metrics_url: str  # keel worker's /metrics
    metrics_token: str
    admin_email: str
    password: str
    mail_folder: Path
    serve_pid: int
    jobs_pid: int
    ports: dict[str, int]  # postgres, redis, clients (the server's)
    trace_folder: Path | None  # --tracemalloc: where the servers write their snapshots
    trim: bool  # --malloc-trim: a second snapshot after malloc_trim(0)
    duration: float
    warmup: float
    users: int
    listeners: int
    rooms: int
    think: float
    admin_think: float
    register_every: float
    reconnect_every: float
    publish_every: float
    seed: int


@dataclass
class Outcome:
    stats: Stats = field(default_factory=Stats)
    checked: Checked = field(default_factory=Checked)
    processes: list[Process] = field(default_factory=list)
    processes_end: list[Process] = field(default_factory=list)
    warm: dict[int, Memory] = field(default_factory=dict)  # after the warm-up
    end: dict[int, Memory] = field(default_factory=dict)
    series: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    traces: dict[int, Path] = field(default_factory=dict)  # --tracemalloc snapshots
    warm_trimmed: dict[int, Memory] = field(default_factory=dict)  # --malloc-trim
    end_trimmed: dict[int, Memory] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)
    clients: list[RealtimeClient] = field(default_factory=list)
    newcomers: list[Newcomer] = field(default_factory=list)
    mails: int = 0
    api_metrics: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    jobs_metrics: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    uncertain_creates: int = 0
    client_cpu: float = 0.0  # this process's CPU seconds in the measured window
    # Uvicorn's lines for workers it replaced, before and after the load started.
    startup_replacements: list[str] = field(default_factory=list)
    load_replacements: list[str] = field(default_factory=list)


async def _guarded(stats: Stats, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """A bug in the soak's own client must show in the report, not end a loop quietly."""
    try:
        await work()
    except Exception as error:  # noqa: BLE001 - reported as a failure
        frames = traceback.format_exception(error)
        stats.fail("soak client error", f"{name}: {''.join(frames[-3:]).strip()}")


async def _loop(
    stats: Stats, gate: Gate, stop: asyncio.Event, vu: VirtualUser, think: float
) -> None:
    while not stop.is_set():
        async with gate.action():
            if stop.is_set():
                break
            await _guarded(stats, vu.account.email, vu.step)
        if think > 0:
            await nap(stop, vu.rng.expovariate(1 / think))


async def _make_accounts(plan: Plan, admin: Caller, stats: Stats) -> list[tuple[Account, Caller]]:
    made = []
    gate = asyncio.Semaphore(4)

    async def one(n: int) -> None:
        email = f"user-{n}@soak.example"
        async with gate:
            answer = await admin.call(
                "setup_user",
                "POST",
                "/api/v1/users",
                CREATED,
                json={"email": email, "password": plan.password, "is_verified": True},
            )
            if answer is None or answer.status_code != 201:
                raise RuntimeError(f"could not make {email}")
            caller = Caller(new_client(plan.base_url), stats)
            pair = await caller.sign_in("setup_login", email, plan.password)
        if pair is None:
            raise RuntimeError(f"{email} could not sign in")
        account = Account(email, answer.json()["id"])
        account.access_token = caller.token = pair["access_token"]
        account.refresh_token = pair["refresh_token"]
        account.token_at = time.monotonic()
        made.append((n, account, caller))

    await asyncio.gather(*(one(n) for n in range(plan.users)))
    return [(account, caller) for _, account, caller in sorted(made, key=lambda m: m[0])]


def _realtime_clients(
    plan: Plan, stats: Stats, accounts: list[Account], admin: Account
) -> list[RealtimeClient]:
    url = plan.base_url.replace("http://", "ws://") + "/api/v1/realtime"
    rooms = [f"room:soak-{n}" for n in range(plan.rooms)]
    made: list[RealtimeClient] = []

    def client(name: str, account: Account, room: str, *, publisher: bool) -> RealtimeClient:
        return RealtimeClient(
            name,
            account,
            room,
            url,
            stats,
            plan.seed * 7919 + len(made),
            publisher=publisher,
            sees_all=account is admin,
            reconnect_every=plan.reconnect_every,
            publish_every=plan.publish_every,
        )

    for n, account in enumerate(accounts):
        made.append(client(f"pub{n}", account, rooms[n % len(rooms)], publisher=True))
    for n in range(plan.listeners):
        account = accounts[n % len(accounts)]
        made.append(client(f"lis{n}", account, rooms[(n + 1) % len(rooms)], publisher=False))
    made.append(client("admin", admin, rooms[0], publisher=False))
    return made


async def _quiet_snapshot(
    gate: Gate, plan: Plan, processes: list[Process]
) -> tuple[dict[int, Memory], dict[int, Memory]]:
    """The load paused: each process's memory, then (--malloc-trim) again after
    malloc_trim(0)."""
    await gate.close()
    await asyncio.sleep(SETTLE_SECONDS)
    memory = await asyncio.to_thread(snapshot, processes, plan.ports)
    if not plan.trim:
        return memory, {}
    signal_all(processes, signal.SIGUSR1)
    await asyncio.sleep(1.0)
    return memory, await asyncio.to_thread(snapshot, processes, plan.ports)


async def _admin(plan: Plan, caller: Caller) -> Account:
    pair = await caller.sign_in("setup_login", plan.admin_email, plan.password)
    if pair is None:
        raise RuntimeError("the first admin could not sign in")
    me = await caller.call(
        "setup_me", "GET", "/api/v1/users/me", frozenset({200}), token=pair["access_token"]
    )
    if me is None or me.status_code != 200:
        raise RuntimeError("the first admin could not read /users/me")
    admin = Account(plan.admin_email, me.json()["id"], role="admin")
    admin.access_token = caller.token = pair["access_token"]
    admin.refresh_token, admin.token_at = pair["refresh_token"], time.monotonic()
    return admin


def _side_tasks(
    plan: Plan,
    stats: Stats,
    gate: Gate,
    stop: asyncio.Event,
    boss: Admin,
    anonymous: Caller,
    mailbox: MailBox,
    joined: list[Newcomer],
) -> list[asyncio.Task[None]]:
    """The admin, the probes and the newcomers."""

    async def admin() -> None:
        await boss.run(gate, stop, plan.admin_think)

    async def probing() -> None:
        await probes(anonymous, stats, gate, stop, plan.metrics_token)

    async def joining() -> None:
        await newcomers(
            anonymous, stats, gate, stop, mailbox, plan.register_every, plan.password, joined
        )

    return [
        asyncio.create_task(_guarded(stats, name, work))
        for name, work in (("admin", admin), ("probes", probing), ("newcomers", joining))
    ]


async def _measure(plan: Plan, result: Outcome, gate: Gate, series: RssSeries) -> None:
    """From the end of the warm-up to the end of the run: a quiet snapshot at both ends,
    the load running in between, its CPU counted."""
    stats = result.stats
    result.processes = server_processes(plan.serve_pid, plan.jobs_pid)
    result.warm, result.warm_trimmed = await _quiet_snapshot(gate, plan, result.processes)
    if plan.trace_folder is not None:
        signal_all(result.processes)  # start tracing: what is allocated from now on
    cpu_before = cpu_since({p.pid: 0.0 for p in result.processes})
    client_before = time.process_time()
    stats.start_measuring()
    gate.open()
    await asyncio.sleep(plan.duration)

    await gate.close()
    stats.stop_measuring("verify")
    result.cpu = cpu_since(cpu_before)
    result.client_cpu = time.process_time() - client_before
    result.processes_end = server_processes(plan.serve_pid, plan.jobs_pid)
    result.end, result.end_trimmed = await _quiet_snapshot(gate, plan, result.processes)
    if plan.trace_folder is not None:
        result.traces = await asyncio.to_thread(collect, result.processes, plan.trace_folder)
    series.stop()
    result.series = series.samples


async def drive(plan: Plan) -> Outcome:
    result = Outcome()
    stats = result.stats
    gate, stop = Gate(), asyncio.Event()
    admin_caller = Caller(new_client(plan.base_url), stats)
    anonymous = Caller(new_client(plan.base_url), stats)
    admin = await _admin(plan, admin_caller)
    made = await _make_accounts(plan, admin_caller, stats)
    accounts = [account for account, _ in made]
    users = [
        VirtualUser(n, account, caller, anonymous, stats, plan.password, plan.seed * 1000 + n)
        for n, (account, caller) in enumerate(made)
    ]
    result.clients = _realtime_clients(plan, stats, accounts, admin)
    mailbox = MailBox(plan.mail_folder)
    tasks = [asyncio.create_task(c.run(gate, stop)) for c in result.clients]
    async with asyncio.timeout(120):
        await asyncio.gather(*(c.subscribed.wait() for c in result.clients))

    boss = Admin(admin, admin_caller, stats, accounts, plan.seed)
    tasks += [asyncio.create_task(_loop(stats, gate, stop, vu, plan.think)) for vu in users]
    tasks += _side_tasks(plan, stats, gate, stop, boss, anonymous, mailbox, result.newcomers)
    stats.phase = "warmup"
    series = RssSeries(server_processes(plan.serve_pid, plan.jobs_pid))
    series.start()
    await asyncio.sleep(plan.warmup)

    await _measure(plan, result, gate, series)

    await verify_realtime(result.clients, [*accounts, admin], stats, result.checked)
    stop.set()
    gate.open()
    async with asyncio.timeout(120):
        await asyncio.gather(*tasks)
    result.uncertain_creates = sum(vu.uncertain_creates for vu in users)
    callers = [vu.caller for vu in users]
    await verify_writes(
        accounts, callers, admin_caller, result.newcomers, mailbox, stats, result.checked
    )
    mailbox.scan()
    result.mails = mailbox.messages
    result.api_metrics = await _scrape(admin_caller, plan.base_url + "/metrics", plan.metrics_token)
    result.jobs_metrics = await _scrape(admin_caller, plan.metrics_url, None)
    for caller in [admin_caller, anonymous, *callers]:
        with contextlib.suppress(httpx.HTTPError):
            await caller.client.aclose()
    return result


async def _scrape(
    caller: Caller, url: str, token: str | None
) -> dict[str, list[tuple[dict[str, str], float]]]:
    answer = await caller.call(
        "verify_metrics", "GET", url, frozenset({200}), authed=token is not None, token=token
    )
    if answer is None or answer.status_code != 200:
        return {}
    return parse_metrics(answer.text)
