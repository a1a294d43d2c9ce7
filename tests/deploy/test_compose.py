"""deploy/compose.yaml: valid against the Compose specification's schema, the services
and their order of start, and settings Keel accepts in production. No engine runs here
(deploy/README.md says what that leaves unchecked).

compose-spec.schema.json is the Compose specification's JSON schema (Apache-2.0), as
docker-compose-linter (dclint) 3.1.0 ships it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from keel.config import ServerSettings, Settings, production_problems
from tests.deploy import compose
from tests.deploy.dockerfile import parse

SCHEMA = Path(__file__).with_name("compose-spec.schema.json")
KEEL_SERVICES = ("api", "worker", "migrate")

# Values for the variables deploy/env.example asks for, as an operator fills them in.
FILLED_IN = {
    "POSTGRES_PASSWORD": "pg-password",
    "MINIO_ROOT_USER": "keel-store",
    "MINIO_ROOT_PASSWORD": "store-password",
    "KEEL_SECRET_KEY": "a-long-random-secret-key-for-the-test",
    "KEEL_METRICS_TOKEN": "a-metrics-token",
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return compose.load()


def services(document: dict[str, Any]) -> dict[str, Any]:
    found = document["services"]
    assert isinstance(found, dict)
    return found


def settings_of(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a process with this environment (and the image's ENV) reads them."""
    for name, value in {**parse().stage("runtime").env(), **environment}.items():
        if name.startswith("KEEL_"):
            monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_the_file_is_valid_compose(document: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [error.message for error in jsonschema.Draft7Validator(schema).iter_errors(document)]
    assert errors == []


def test_the_schema_check_catches_a_broken_file(document: dict[str, Any]) -> None:
    """The check above can fail: a misspelt key and a bad condition are reported."""
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(document))
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken["services"]["worker"]["stop_grace"] = "40s"
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(broken))
    assert len(errors) == 2, [error.message for error in errors]


def test_the_services(document: dict[str, Any]) -> None:
    found = services(document)
    assert set(found) == {"api", "worker", "migrate", "postgres", "redis", "minio", "bucket"}
    for name in KEEL_SERVICES:
        assert found[name]["image"] == "keel:local"
        assert found[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert "command" not in found["api"], "the api runs the image's CMD (keel serve)"
    assert found["worker"]["command"] == ["keel", "worker"]
    assert found["migrate"]["command"] == ["keel", "db", "upgrade"]
    for name, service in found.items():
        image = str(service["image"])
        assert ":" in image, f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image}"


def test_keel_starts_after_the_migration_and_the_bucket(document: dict[str, Any]) -> None:
    found = services(document)
    for name in ("api", "worker"):
        depends = found[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["bucket"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
    assert found["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert found["bucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    # One-off jobs: never restarted, no health check of their own.
    for name in ("migrate", "bucket"):
        assert found[name]["restart"] == "no", name
        assert found[name]["healthcheck"] == {"disable": True}, name
    # Every service something waits for with service_healthy has a health check.
    for service in found.values():
        for dependency, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                assert "test" in found[dependency]["healthcheck"], dependency


def test_every_keel_variable_is_a_real_setting(document: dict[str, Any]) -> None:
    names = compose.setting_names()
    assert {"KEEL_DATABASE_URL", "KEEL_STORAGE_S3_BUCKET", "KEEL_MAIL_FROM"} <= names
    for name in KEEL_SERVICES:
        for variable in services(document)[name]["environment"]:
            if variable.startswith("KEEL_"):
                assert variable in names, f"{name}: {variable} is not a setting"


def test_required_variables_are_listed_in_the_env_example() -> None:
    text = compose.COMPOSE_FILE.read_text()
    used = compose.variables_used(text)
    required = {name for name, operator in used.items() if operator == ":?"}
    assert required == set(FILLED_IN)
    assert compose.env_file_names() == required
    # Anything used without a default is required: none is silently empty.
    assert all(operator is not None for operator in used.values()), used


def test_compose_refuses_to_start_without_the_secrets(document: dict[str, Any]) -> None:
    api = services(document)["api"]
    for missing in FILLED_IN:
        variables = {name: value for name, value in FILLED_IN.items() if name != missing}
        with pytest.raises(compose.MissingVariableError, match=missing):
            compose.environment(api, variables)


def test_the_api_settings_pass_the_production_checks(
    document: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = compose.environment(services(document)["api"], FILLED_IN)
    settings = settings_of(api, monkeypatch)
    assert settings.is_production
    workers = settings.server.workers
    assert workers == 4
    assert production_problems(settings, workers) == []
    assert settings.database_url == "postgresql+asyncpg://keel:pg-password@postgres:5432/keel"
    assert settings.redis.url == "redis://redis:6379/0"
    assert settings.jobs_on_dramatiq
    assert settings.storage.backend == "s3"
    assert settings.storage.s3_bucket == "keel"
    assert settings.storage.s3_endpoint_url == "http://minio:9000"
    assert api["AWS_ACCESS_KEY_ID"] == FILLED_IN["MINIO_ROOT_USER"]
    assert api["AWS_SECRET_ACCESS_KEY"] == FILLED_IN["MINIO_ROOT_PASSWORD"]
    # Empty optional values are read as "not set", not as settings of their own.
    assert not settings.first_admin.email
    assert not settings.mail.smtp_username


def test_the_signing_key_is_a_mounted_secret(
    document: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = document["secrets"]
    assert declared == {"keel_signing_key": {"file": "./secrets/signing-key.pem"}}
    for name in ("api", "worker"):
        service = services(document)[name]
        settings = settings_of(compose.environment(service, FILLED_IN), monkeypatch)
        assert settings.auth.signing_key_files == [Path("/run/secrets/keel_signing_key")]
        assert service["secrets"] == ["keel_signing_key"], name
    # The migration needs no key: it is not given one.
    assert "secrets" not in services(document)["migrate"]


def test_every_keel_process_shares_the_same_settings(document: dict[str, Any]) -> None:
    envs = {
        name: compose.environment(services(document)[name], FILLED_IN) for name in KEEL_SERVICES
    }
    shared = set(envs["migrate"])
    for name in ("api", "worker"):
        assert shared <= set(envs[name]), name
        for variable in shared:
            assert envs[name][variable] == envs["migrate"][variable], (name, variable)


def test_graceful_stop_outlasts_the_drain(document: dict[str, Any]) -> None:
    grace = ServerSettings().graceful_timeout
    for name in ("api", "worker"):
        stop = services(document)[name]["stop_grace_period"]
        assert float(stop.removesuffix("s")) > grace, name


def test_the_api_is_published_on_loopback_by_default(document: dict[str, Any]) -> None:
    [published] = services(document)["api"]["ports"]
    assert compose.interpolate(published, {}) == "127.0.0.1:8000:8000"
