"""Settings: one class, read from `KEEL_*` variables and `.env`, in nested groups.

A group's fields are read as `KEEL_<GROUP>_<FIELD>` (`KEEL_DATABASE_URL`,
`KEEL_CORS_ORIGINS`, `KEEL_METRICS_TOKEN`), which keeps the names API.md uses while
the code sees `settings.database.url`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class DatabaseSettings(BaseModel):
    # None means the embedded default: SQLite in the data folder.
    url: str | None = None
    pool_size: int = Field(default=10, ge=1)
    max_overflow: int = Field(default=10, ge=0)
    pool_timeout: float = Field(default=5.0, gt=0)
    # A statement on the request pool that has not answered in this long fails (503):
    # a hung server must not hold requests, and their connections, forever.
    statement_timeout: float = Field(default=30.0, gt=0)
    # A pooled connection idle longer than this is pinged before use (a restart or an
    # idle-killing proxy may have closed it); busier ones are used as they are.
    ping_after_idle_seconds: float = Field(default=10.0, ge=0)
    echo: bool = False


class RedisSettings(BaseModel):
    url: str | None = None
    # Every key Keel writes starts with this, so one Redis can serve several deployments.
    key_prefix: str = "keel:"
    # A Redis that does not answer fails fast (docs/failure-modes.md): seconds to connect,
    # and to wait for any one reply.
    connect_timeout: float = Field(default=1.0, gt=0)
    socket_timeout: float = Field(default=2.0, gt=0)


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    # Seconds in-flight requests get to finish after SIGTERM.
    graceful_timeout: float = Field(default=30.0, ge=0)
    # Seconds a worker may take to start, or to answer the supervisor's liveness ping,
    # before it is replaced (Uvicorn's 5 s replaced workers still importing on a busy host).
    worker_healthcheck_timeout: int = Field(default=30, ge=1)
    # Proxies whose X-Forwarded-* headers are believed (comma-separated IPs or CIDRs).
    trusted_proxies: list[str] = Field(default_factory=list)


class CorsSettings(BaseModel):
    origins: list[str] = Field(default_factory=list)
    allow_credentials: bool = False


class MetricsSettings(BaseModel):
    token: SecretStr | None = None


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "auto": JSON lines in production, readable lines elsewhere.
    format: Literal["auto", "json", "console"] = "auto"
    # Paths whose requests write no access line (still counted in /metrics): load
    # balancers probe /health every few seconds, and those lines drown the rest.
    access_skip_paths: list[str] = Field(default_factory=lambda: ["/health"])


class HttpSettings(BaseModel):
    max_json_body_bytes: int = Field(default=1 * MiB, ge=1)
    # A request's line and headers: larger is 431; still arriving after the timeout, 408.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    gzip_min_bytes: int = Field(default=1024, ge=0)
    hsts_max_age: int = Field(default=31_536_000, ge=0)
    # Long transfers (exports, downloads, uploads; core/transfers.py): at most this many
    # at once per caller (429 past it) and per process (503 past it).
    transfers_per_user: int = Field(default=6, ge=1)
    transfers_per_process: int = Field(default=64, ge=1)
    # A streamed response whose client reads nothing for this long is dropped.
    send_timeout_seconds: float = Field(default=30.0, gt=0)
    # An upload body from which nothing arrives for this long is refused (408).
    receive_timeout_seconds: float = Field(default=30.0, gt=0)


class AuthSettings(BaseModel):
    # PEM files of the signing keys, newest first: the first signs, the others only
    # verify tokens still alive. None: a P-256 key is generated into the data folder at
    # first start (fine on a laptop, refused in production).
    signing_key_files: list[Path] = Field(default_factory=list)
    # None: the public base URL.
    issuer: str | None = None
    audience: str = "keel-api"
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_days: int = Field(default=30, ge=1, le=365)
    registration_open: bool = True
    # Argon2id, RFC 9106's second recommended option (t=3, 64 MiB); p=2 for two cores.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65_536, ge=8)
    argon2_parallelism: int = Field(default=2, ge=1)
    # Hashes computed at once, off the event loop. None: one per CPU.
    hash_concurrency: int | None = Field(default=None, ge=1)
    api_key_prefix: str = "keel_"
    verify_email_ttl_hours: int = Field(default=48, ge=1)
    reset_password_ttl_minutes: int = Field(default=60, ge=5)


class LimitSettings(BaseModel):
    """Rate limits, in the `limits` library's notation (API.md's defaults)."""

    token_account: str = "10/minute"  # noqa: S105 - a rate, not a secret
    token_ip: str = "60/minute"  # noqa: S105 - a rate, not a secret
    register_ip: str = "20/hour"
    email_ip: str = "5/hour"


class MailSettings(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    # "console": to the log and an .eml file in the data folder's mail/ (development).
    backend: Literal["console", "smtp"] = "console"
    # KEEL_MAIL_FROM (`from` is a Python keyword, so the field has another name).
    sender: str = Field(default="Keel <no-reply@localhost>", alias="from")
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # "starttls": upgrade a plain connection (port 587); "tls": implicit TLS (port 465).
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout: float = Field(default=10.0, gt=0)
    # A CA bundle (PEM) to trust for the server's certificate, for relays with a
    # private CA; unset, the system's trust store is used.
    smtp_ca_file: Path | None = None


class JobSettings(BaseModel):
    # auto: Dramatiq on Redis when KEEL_REDIS_URL is set (run `keel worker` beside the
    # API), otherwise the in-process runner inside `keel serve`.
    backend: Literal["auto", "inprocess", "dramatiq"] = "auto"
    # Jobs the in-process runner (or one `keel worker`) runs at the same time.
    concurrency: int = Field(default=8, ge=1, le=256)
    # How often expired tokens and idempotency records are deleted.
    purge_interval_seconds: int = Field(default=3600, ge=10)
    # Where `keel worker` serves its own /metrics (0: not at all).
    worker_metrics_port: int = Field(default=9191, ge=0, le=65535)


# The upload types API.md allows by default: detected from the bytes, never the name.
DEFAULT_UPLOAD_TYPES = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
    "text/csv",
    "application/json",
]


class StorageSettings(BaseModel):
    # "local": a folder under the data folder (one host); "s3": any S3-compatible store.
    backend: Literal["local", "s3"] = "local"
    # None: `files/` under the data folder.
    local_path: Path | None = None
    s3_bucket: str | None = None
    # None for AWS itself; the store's address otherwise (MinIO, Ceph, moto...).
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # Uploads larger than this go to S3 in parts of this size (S3's minimum is 5 MiB).
    s3_part_bytes: int = Field(default=8 * MiB, ge=5 * MiB)
    # Bytes each user may keep stored in all; None: no quota.
    quota_bytes_per_user: int | None = Field(default=None, ge=1)
    allowed_types: list[str] = Field(default_factory=lambda: list(DEFAULT_UPLOAD_TYPES))
    # How often stored objects that no file references are looked for and removed.
    sweep_interval_seconds: int = Field(default=3600, ge=10)
    # An object younger than this may belong to an upload still in flight: never swept.
    sweep_grace_seconds: int = Field(default=3600, ge=0)


class RealtimeSettings(BaseModel):
    # Seconds a new connection has to authenticate (API.md: 10).
    auth_timeout_seconds: float = Field(default=10.0, gt=0)
    # Messages each connection may publish: a burst of this many, refilled at this rate.
    publish_burst: int = Field(default=20, ge=1)
    publish_per_second: float = Field(default=10.0, gt=0)
    # What each channel keeps for clients resuming with `since` (API.md: at least 5
    # minutes, up to 10,000 frames); older is a `gap`.
    history_seconds: int = Field(default=300, ge=300)
    history_frames: int = Field(default=10_000, ge=1, le=100_000)
    # Frames waiting to be sent to one connection; past it the client is too slow (1013).
    outbox_frames: int = Field(default=1024, ge=16)
    # How often ended sessions and expired credentials are looked for (4401).
    check_interval_seconds: float = Field(default=2.0, gt=0)
    # permessage-deflate, when the client offers it (browsers do): small frames shrink
    # about 4x, for about 25 µs of CPU per frame sent and twice the memory per idle
    # connection (bench/RESULTS.md). A bandwidth-or-CPU choice per deployment.
    compression: bool = True
    # Protocol-level pings from the server (a dead peer is dropped after the timeout).
    ping_interval_seconds: float = Field(default=20.0, gt=0)
    ping_timeout_seconds: float = Field(default=20.0, gt=0)


class FirstAdminSettings(BaseModel):
    # When both are set and no admin exists, one is created at start.
    email: str | None = None
    password: SecretStr | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KEEL_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
    )

    env: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path("data")
    public_base_url: str = "http://localhost:8000"
    # None: on in development, off in production.
    docs_enabled: bool | None = None
    # FastAPI's native OpenTelemetry instrumentation (uses the global OTel providers).
    otel_enabled: bool = False

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limit: LimitSettings = Field(default_factory=LimitSettings)
    first_admin: FirstAdminSettings = Field(default_factory=FirstAdminSettings)
    mail: MailSettings = Field(default_factory=MailSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)
    # The largest upload, counting the file's bytes (API.md: KEEL_MAX_UPLOAD_BYTES).
    max_upload_bytes: int = Field(default=25 * MiB, ge=1)
    # Signs cursors and other server-made values. None: generated into the data folder.
    secret_key: SecretStr | None = None

    @field_validator("public_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _dramatiq_needs_redis(self) -> Settings:
        if self.jobs.backend == "dramatiq" and not self.redis.url:
            raise ValueError("KEEL_JOBS_BACKEND=dramatiq needs KEEL_REDIS_URL: the queue is Redis.")
        return self

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.storage.backend == "s3" and not self.storage.s3_bucket:
            raise ValueError("KEEL_STORAGE_BACKEND=s3 needs KEEL_STORAGE_S3_BUCKET.")
        return self

    @property
    def storage_path(self) -> Path:
        return self.storage.local_path or self.data_dir / "files"

    @property
    def jobs_on_dramatiq(self) -> bool:
        if self.jobs.backend == "auto":
            return self.redis.url is not None
        return self.jobs.backend == "dramatiq"

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'keel.db'}"

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def show_docs(self) -> bool:
        if self.docs_enabled is None:
            return not self.is_production
        return self.docs_enabled

    @property
    def token_issuer(self) -> str:
        return self.auth.issuer or self.public_base_url

    @property
    def log_as_json(self) -> bool:
        if self.log.format == "auto":
            return self.is_production
        return self.log.format == "json"


class UnsafeSettingsError(Exception):
    """Raised at start-up when settings are unsafe for where they are used."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def in_process_backend_problems(settings: Settings, workers: int) -> list[str]:
    """Several worker processes cannot share in-process state: say what to configure."""
    if workers > 1 and settings.jobs.backend == "inprocess":
        return [
            (
                f"{workers} workers would each run their own in-process jobs: set "
                "KEEL_JOBS_BACKEND=dramatiq (or auto) with KEEL_REDIS_URL and run "
                "`keel worker`, or run one worker."
            )
        ]
    if workers > 1 and not settings.redis.url:
        return [
            (
                f"{workers} workers need shared backends, but rate limits, realtime delivery "
                "and jobs are in-process: set KEEL_REDIS_URL (and KEEL_DATABASE_URL to "
                "PostgreSQL), or run one worker."
            )
        ]
    return []


def production_problems(settings: Settings, workers: int | None = None) -> list[str]:
    """Each unsafe production setting, one plain line each (empty when all is well)."""
    if not settings.is_production:
        return []
    workers = workers or settings.server.workers
    problems: list[str] = []
    if "*" in settings.cors.origins and settings.cors.allow_credentials:
        problems.append(
            "KEEL_CORS_ORIGINS contains '*' while KEEL_CORS_ALLOW_CREDENTIALS is true: "
            "list the allowed origins explicitly."
        )
    if not settings.auth.signing_key_files:
        problems.append(
            "No signing keys configured: set KEEL_AUTH_SIGNING_KEY_FILES to PEM files "
            "(generated keys are for development only)."
        )
    if settings.secret_key is None:
        problems.append(
            "KEEL_SECRET_KEY is not set (a generated one is for development only): set it "
            "to a long random value, the same on every worker."
        )
    if settings.metrics.token is None:
        problems.append("KEEL_METRICS_TOKEN is not set: /metrics must be protected.")
    if settings.uses_embedded_database and workers > 1:
        problems.append(
            "The embedded SQLite database cannot serve several workers: set "
            "KEEL_DATABASE_URL to PostgreSQL."
        )
    problems.extend(in_process_backend_problems(settings, workers))
    return problems


def check_settings(settings: Settings, workers: int | None = None) -> None:
    problems = production_problems(settings, workers)
    if problems:
        raise UnsafeSettingsError(problems)
