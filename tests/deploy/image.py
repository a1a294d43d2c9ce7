"""The image's virtual environment, built here by running deploy/Dockerfile's builder
stage step by step: its WORKDIR, its COPYs (through .dockerignore) and its `uv` RUN lines
exactly as written, with its ENV. Only the destination differs (a temporary folder for
/app/.venv), uv is run.py's pinned uv (the Dockerfile pins the same version; checked in
test_dockerfile.py), and it runs offline from the uv cache `run.py` filled: no network.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy.dockerfile import REPO_ROOT, dockerignore_patterns, expand, ignored, parse

IMAGE_VENV = "/app/.venv"


def uv_binary() -> str:
    """run.py's uv (installed into .tools/ by the first `python3 run.py ...`)."""
    bin_dir = REPO_ROOT / ".tools" / "bin"
    uv = bin_dir / "uv"
    assert uv.exists(), "run the tests through `python3 run.py test`: it installs uv"
    return str(uv)


def _copy_into(source: Path, destination: Path, patterns: list[str]) -> None:
    relative = source.relative_to(REPO_ROOT).as_posix()
    if ignored(relative, patterns):
        return
    if source.is_dir():
        destination.mkdir(parents=True, exist_ok=True)
        for child in sorted(source.iterdir()):
            _copy_into(child, destination / child.name, patterns)
    else:
        shutil.copy2(source, destination)


def build_venv(scratch: Path) -> Path:
    """Run the builder stage into `scratch`; return the venv (the image's /app/.venv)."""
    dockerfile = parse()
    builder = dockerfile.stage("builder")
    venv = scratch / "venv"
    patterns = dockerignore_patterns()
    args = dict(dockerfile.global_args)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KEEL_", "UV_")) and name != "VIRTUAL_ENV"
    }
    env |= {
        "UV_OFFLINE": "1",
        "UV_PYTHON": str(Path(sys.base_prefix) / "bin" / "python3"),
        "PATH": f"{Path(uv_binary()).parent}{os.pathsep}{env.get('PATH', '')}",
    }
    workdir = scratch / "context"
    for instruction in builder.instructions:
        arguments = expand(instruction.arguments, args)
        if instruction.keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
        elif instruction.keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                env[name] = str(venv) if value == IMAGE_VENV else value
        elif instruction.keyword == "WORKDIR":
            workdir = scratch / "context" / arguments.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, destination = shlex.split(arguments)
            target = (workdir / destination).resolve()
            for source in sources:
                name = Path(source).name
                into = target / name if destination.endswith("/") else target
                _copy_into(REPO_ROOT / source, into, patterns)
        elif instruction.keyword == "RUN" and arguments.startswith("uv "):
            subprocess.run(shlex.split(arguments), cwd=workdir, env=env, check=True)
        elif instruction.keyword == "RUN":
            # Installing uv itself: here it is run.py's uv, of the same pinned version.
            assert "uv==" in arguments, arguments
    assert (venv / "bin" / "keel").exists(), "the builder stage made no keel command"
    return venv
