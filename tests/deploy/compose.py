"""deploy/compose.yaml read as Compose reads it: YAML (merge keys included), then
`${...}` interpolation from deploy/.env; and Keel's setting names, from Settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from keel.config import Settings
from tests.deploy.dockerfile import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"
ENV_EXAMPLE = REPO_ROOT / "deploy" / "env.example"

# Compose's interpolation: $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME:?error}.
_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:-|:\?)([^}]*))?\}")


class MissingVariableError(Exception):
    pass


def load(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def interpolate(value: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, argument = match[1], match[2], match[3]
        given = variables.get(name, "")
        if operator == ":?" and not given:
            raise MissingVariableError(f"{name}: {argument}")
        if operator == ":-" and not given:
            return argument
        return given

    return _INTERPOLATION.sub(replace, value)


def variables_used(text: str) -> dict[str, str | None]:
    """Each ${NAME...} in `text`: its operator (':-', ':?' or None)."""
    return {match[1]: match[2] for match in _INTERPOLATION.finditer(text) if match[1]}


def env_file_names(path: Path = ENV_EXAMPLE) -> set[str]:
    return {
        line.split("=", 1)[0].strip()
        for line in path.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }


def environment(service: dict[str, Any], variables: dict[str, str]) -> dict[str, str]:
    """A service's environment, interpolated."""
    raw = service.get("environment", {})
    assert isinstance(raw, dict), "environment as a mapping"
    return {str(name): interpolate(str(value), variables) for name, value in raw.items()}


def setting_names() -> set[str]:
    """Every KEEL_* variable Settings reads (groups as KEEL_<GROUP>_<FIELD>)."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            for member, member_field in group.model_fields.items():
                names.add(f"KEEL_{name}_{member_field.alias or member}".upper())
        else:
            names.add(f"KEEL_{name}".upper())
    return names
