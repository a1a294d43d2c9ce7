"""A small reader of deploy/Dockerfile: stages, instructions, ARG defaults and ENV, the
exec-form commands. Enough to check the file and to run its build steps here, where no
Docker engine runs; not a general Dockerfile parser (no heredocs, no escape directive).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    arguments: str  # the rest of the logical line, continuations joined


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [each for each in self.instructions if each.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        [instruction] = self.all(keyword)
        return instruction

    def env(self) -> dict[str, str]:
        """Every ENV of the stage, in order (later values win)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.arguments):
                name, _, value = pair.partition("=")
                values[name] = value
        return values


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        [stage] = [each for each in self.stages if each.name == name]
        return stage


def logical_lines(text: str) -> list[str]:
    """Lines with comments dropped and backslash continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return lines


def expand(text: str, values: dict[str, str]) -> str:
    """`${NAME}` and `$NAME` replaced from `values` (unknown names left as they are)."""
    return _VARIABLE.sub(lambda m: values.get(m[1] or m[2], m[0]), text)


def parse(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            image, _, name = expand(arguments, global_args).partition(" AS ")
            stages.append(Stage(name=name.strip(), base=image.strip()))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = arguments.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return Dockerfile(global_args, stages)


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of a CMD (or HEALTHCHECK's CMD); shell form is refused."""
    arguments = instruction.arguments
    if instruction.keyword == "HEALTHCHECK":
        arguments = arguments.split(" CMD ", 1)[1]
    command = json.loads(arguments)
    assert isinstance(command, list), arguments
    return [str(part) for part in command]


def healthcheck_options(instruction: Instruction) -> dict[str, str]:
    options = instruction.arguments.split(" CMD ", 1)[0].split()
    return dict(option.removeprefix("--").split("=", 1) for option in options)


def copy_sources(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """A COPY's (flags, sources, destination)."""
    parts = shlex.split(instruction.arguments)
    flags = dict(part.removeprefix("--").split("=", 1) for part in parts if part.startswith("--"))
    paths = [part for part in parts if not part.startswith("--")]
    return flags, paths[:-1], paths[-1]


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `relative` (a path in the build context) out: the last
    matching pattern wins, `!` re-includes; a pattern matches the path or a parent."""
    result = False
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        if any(_matches(candidate, glob) for candidate in candidates):
            result = not negated
    return result


def _matches(path: str, glob: str) -> bool:
    regex = ""
    at = 0
    while at < len(glob):
        if glob.startswith("**/", at):
            regex += "(?:.*/)?"
            at += 3
        elif glob[at] == "*":
            regex += "[^/]*"
            at += 1
        elif glob[at] == "?":
            regex += "[^/]"
            at += 1
        else:
            regex += re.escape(glob[at])
            at += 1
    return re.fullmatch(regex, path) is not None
