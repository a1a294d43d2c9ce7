#!/usr/bin/env python3
"""Set everything up, then run Keel or its tests. Needs only Python 3.11+ and git.

    python3 run.py serve     # the service on http://127.0.0.1:8000 (SQLite in ./data)
    python3 run.py test      # the test suite (add pytest arguments after it)
    python3 run.py check     # the quality gates: format, lint, types, migrations
    python3 run.py keel ...  # any `keel` command, e.g. `python3 run.py keel db current`

It installs a pinned `uv` into .tools/ on first use, then makes
.venv from the committed uv.lock (exactly those versions) and runs the command in it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TOOLS = ROOT / ".tools"
UV_VERSION = "0.13.9"


def say(message: str) -> None:
    print(f"run.py: {message}", file=sys.stderr, flush=True)


def find_uv() -> str:
    # A pinned uv of our own, so that every machine reads uv.lock the same way.
    bin_dir = TOOLS / ("Scripts" if os.name == "nt" else "bin")
    uv = bin_dir / ("uv.exe" if os.name == "nt" else "uv")
    if not uv.exists():
        say(f"installing uv {UV_VERSION} into {TOOLS.name}/ (first run only)")
        venv.create(TOOLS, with_pip=True)
        subprocess.run(
            [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"],
            check=True,
        )
    return str(uv)


def sync(uv: str) -> None:
    say("syncing .venv with uv.lock")
    subprocess.run([uv, "sync", "--frozen", "--quiet"], cwd=ROOT, check=True)


def run(uv: str, *command: str, env: dict[str, str] | None = None) -> int:
    return subprocess.call(
        [uv, "run", "--frozen", "--no-sync", *command], cwd=ROOT, env=env or None
    )


def check(uv: str) -> int:
    gates = [
        ("format", ["ruff", "format", "--check", "."]),
        ("lint", ["ruff", "check", "."]),
        ("types", ["mypy"]),
        ("layers", ["lint-imports", "--no-cache"]),
    ]
    for name, command in gates:
        say(f"gate: {name}")
        if run(uv, *command) != 0:
            say(f"gate failed: {name}")
            return 1
    # Models and migrations agree: migrate a scratch database (SQLite unless
    # KEEL_DATABASE_URL names another), then let Alembic compare.
    say("gate: migrations")
    with tempfile.TemporaryDirectory(prefix="keel-check-") as scratch:
        env = {**os.environ, "KEEL_DATA_DIR": scratch}
        for command in (["keel", "db", "upgrade"], ["keel", "db", "check"]):
            if run(uv, *command, env=env) != 0:
                say("gate failed: migrations")
                return 1
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "check", "keel"}:
        print(__doc__, file=sys.stderr)
        return 2
    if sys.version_info < (3, 11):
        say("Keel needs Python 3.11 or newer")
        return 2
    uv = find_uv()
    sync(uv)
    action, rest = argv[0], argv[1:]
    if action == "serve":
        return run(uv, "keel", "serve", *rest)
    if action == "test":
        return run(uv, "pytest", *rest)
    if action == "check":
        return check(uv)
    return run(uv, "keel", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
