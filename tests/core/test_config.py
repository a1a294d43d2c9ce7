"""Settings: names, groups, .env, and the production refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.config import (
    CorsSettings,
    Settings,
    UnsafeSettingsError,
    check_settings,
    production_problems,
)
from keel.main import create_app


def test_group_fields_read_from_flat_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_DATABASE_URL", "postgresql+asyncpg://db/keel")
    monkeypatch.setenv("KEEL_DATABASE_POOL_SIZE", "7")
    monkeypatch.setenv("KEEL_REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("KEEL_CORS_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("KEEL_METRICS_TOKEN", "m")
    monkeypatch.setenv("KEEL_DATA_DIR", "/var/lib/keel")
    settings = Settings(_env_file=None)
    assert settings.database.url == "postgresql+asyncpg://db/keel"
    assert settings.database.pool_size == 7
    assert settings.redis.url == "redis://cache:6379/0"
    assert settings.cors.origins == ["https://a.example"]
    assert settings.metrics.token is not None
    assert settings.metrics.token.get_secret_value() == "m"
    assert settings.data_dir == Path("/var/lib/keel")
    assert not settings.uses_embedded_database


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("KEEL_ENV=production\nKEEL_SERVER_PORT=9000\n")
    settings = Settings(_env_file=env_file)
    assert settings.env == "production"
    assert settings.server.port == 9000


def test_embedded_defaults(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}"
    assert settings.uses_embedded_database
    assert settings.show_docs
    assert not settings.log_as_json
    assert settings.public_base_url == "http://localhost:8000"


def test_bad_value_is_refused() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        Settings.model_validate({"database": {"pool_size": 0}})


def _production(**values: object) -> Settings:
    base: dict[str, object] = {
        "env": "production",
        "metrics": {"token": "t"},
        "auth": {"signing_key_files": ["/keys/a.pem"]},
        "database": {"url": "postgresql+asyncpg://db/keel"},
        "redis": {"url": "redis://cache"},
        "secret_key": "s" * 40,
    }
    base.update(values)
    return Settings(_env_file=None, **base)  # type: ignore[arg-type]


def test_safe_production_settings_pass() -> None:
    settings = _production()
    assert production_problems(settings, workers=4) == []
    assert not settings.show_docs
    assert settings.log_as_json


def test_each_unsafe_production_setting_is_one_line() -> None:
    settings = _production(
        cors={"origins": ["*"], "allow_credentials": True},
        metrics={"token": None},
        auth={"signing_key_files": []},
        database={"url": None},
        redis={"url": None},
        secret_key=None,
    )
    problems = production_problems(settings, workers=2)
    assert len(problems) == 6
    joined = "\n".join(problems)
    for name in (
        "KEEL_CORS_ORIGINS",
        "KEEL_AUTH_SIGNING_KEY_FILES",
        "KEEL_METRICS_TOKEN",
        "KEEL_DATABASE_URL",
        "KEEL_REDIS_URL",
        "KEEL_SECRET_KEY",
    ):
        assert name in joined
    assert all("\n" not in problem for problem in problems)


def test_wildcard_origin_without_credentials_is_allowed() -> None:
    assert production_problems(_production(cors={"origins": ["*"]})) == []


def test_app_factory_refuses_unsafe_production(tmp_path: Path) -> None:
    with pytest.raises(UnsafeSettingsError) as refused:
        create_app(Settings(_env_file=None, env="production", data_dir=tmp_path))
    assert "KEEL_METRICS_TOKEN" in str(refused.value)


def test_development_is_never_refused(tmp_path: Path) -> None:
    check_settings(Settings(_env_file=None, data_dir=tmp_path, cors=CorsSettings(origins=["*"])))
