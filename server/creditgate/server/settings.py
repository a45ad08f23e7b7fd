"""Settings, read and validated once from CREDITGATE_* environment variables into one frozen object."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Hash-tag shards on a Redis Cluster unless `shards` is set: each {sN} tag is one slot, so 8 would put every
# customer on at most 8 slots (of 16,384) and leave primaries empty; 256 spreads them over every primary, and a
# slot moved between primaries carries 1/256 of them.
CLUSTER_SHARDS = 256


class ApiKey(BaseModel):
    """One accepted API key: only its SHA-256 (hex) is configured, never the key itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: frozenset[Literal["metering", "admin"]] = Field(min_length=1)


class Settings(BaseSettings):
    """Everything the sidecar can be told; nothing else reads the environment."""

    model_config = SettingsConfigDict(env_prefix="CREDITGATE_", frozen=True, extra="ignore")

    listen: str = "127.0.0.1:50051"
    # Unset: an embedded redis-server is started in data_dir.
    redis_url: str | None = None
    # A Redis command that takes longer fails with UNAVAILABLE (safe to retry with the same request_id).
    redis_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # Every change is answered only once this many replicas of its Redis have it (WAIT, within half of
    # redis_timeout_seconds, else UNAVAILABLE): a failover then loses no acknowledged decision. 0: not waited for.
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    # Unset: sqlite:///<data_dir>/creditgate.db
    database_url: str | None = None
    # PostgreSQL only: the schema owner, who applies migrations at start and grants database_url's role
    # SELECT and INSERT only. Unset: database_url's role owns the schema.
    database_migration_url: str | None = None
    catalog: Path | None = None
    data_dir: Path = Path("data")
    # Customers are spread over this many Redis hash slots ({sN} tags); fixed for a deployment (Redis records it
    # and a start with another count is refused). Unset: 8 on one Redis, CLUSTER_SHARDS on a Redis Cluster.
    shards: int = Field(default=8, ge=1, le=1024)
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)
    flush_interval_seconds: float = Field(default=0.2, gt=0, le=60)
    # A backlog drains in batches this big: SQLite took 2,000 random-customer entries in one transaction 10-30%
    # faster per entry than 500 (bench/NOTES.md); an idle outbox is read as it comes.
    flush_batch_size: int = Field(default=2000, ge=1, le=10_000)
    # `serve` runs the flusher in a child process, off the serving process's CPU; false keeps it a task of it.
    flusher_process: bool = True
    # A consumer's pending entries older than this are claimed by another flusher (XAUTOCLAIM).
    flush_claim_idle_seconds: float = Field(default=30.0, gt=0)
    top_up_priority: int = Field(default=20, ge=0, le=999)
    adjustment_priority: int = Field(default=30, ge=0, le=999)
    hold_default_ttl_seconds: int = Field(default=300, ge=1)
    hold_max_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    # The sweeper returns abandoned holds' credits within this interval of their expiry.
    hold_sweep_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    # Replicas sharing a durable store run a catalog another replica applied within this interval.
    catalog_refresh_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    log_format: Literal["console", "json"] = "console"
    # Which calls get a log line: "errors" (calls that failed; successes are counted in the metrics) or "all".
    log_calls: Literal["errors", "all"] = "errors"
    # "simulated" (alias "manual"): a clock that starts at the real now and moves only by AdminService.AdvanceClock.
    clock: Literal["system", "simulated", "manual"] = "system"
    # API keys as a JSON list of {name, sha256, scopes}; none means no auth, allowed on loopback only.
    api_keys: tuple[ApiKey, ...] = ()
    # A file with the same JSON list (e.g. a mounted secret); its keys are added to api_keys.
    api_keys_file: Path | None = None
    # TLS from PEM files; a client CA turns on mTLS (clients must present a certificate it signed).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # host:port of the Prometheus /metrics endpoint; unset means no endpoint.
    metrics_listen: str | None = None
    health_probe_interval_seconds: float = Field(default=2.0, gt=0, le=300)
    health_probe_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    # How often ended credit periods are invoiced (from the durable ledger).
    invoice_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Webhook receivers of billing events, as a JSON list; none means events are only kept.
    webhook_urls: tuple[str, ...] = ()
    # The Standard Webhooks signing secret ("whsec_" + base64); required when webhook_urls are set.
    webhook_secret: str | None = None
    # A delivery is tried this many times (backoff doubling from webhook_backoff_seconds), then dead-lettered.
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff_seconds: float = Field(default=5.0, gt=0, le=3600)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Requests in flight to one receiver; each receiver has its own (a hung one holds only its own lane).
    webhook_concurrency_per_receiver: int = Field(default=4, ge=1, le=64)
    deliver_interval_seconds: float = Field(default=1.0, gt=0, le=600)
    # The gateway's routes file (YAML): which HTTP requests are which feature, for Envoy ext_authz (served on
    # `listen`) and HTTP forward-auth. Unset: neither front door.
    routes: Path | None = None
    # host:port of the HTTP forward-auth endpoint (nginx auth_request, Traefik, Caddy); needs routes.
    http_authz_listen: str | None = None

    @field_validator("listen", "metrics_listen", "http_authz_listen")
    @classmethod
    def _listen_has_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("listen must be host:port, e.g. 127.0.0.1:50051")
        return value

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Settings:
        if self.webhook_urls and not self.webhook_secret:
            raise ValueError("webhook_urls need webhook_secret (deliveries are signed)")
        return self

    @model_validator(mode="after")
    def _forward_auth_has_routes(self) -> Settings:
        if self.http_authz_listen is not None and self.routes is None:
            raise ValueError("http_authz_listen needs routes (the routes file it decides by)")
        return self

    @model_validator(mode="after")
    def _holds_are_remembered_while_they_live(self) -> Settings:
        # A Reserve's remembered answer must outlive the longest hold: a retry after it is forgotten, while the hold
        # it made is still open, holds the credits a second time (the caller never learns the first hold's id).
        if self.idempotency_ttl_seconds < self.hold_max_ttl_seconds:
            raise ValueError(
                f"idempotency_ttl_seconds ({self.idempotency_ttl_seconds}) is shorter than hold_max_ttl_seconds"
                f" ({self.hold_max_ttl_seconds}): a Reserve's request_id would be forgotten while its hold is open, and"
                " a retry would hold the credits again; raise idempotency_ttl_seconds or lower hold_max_ttl_seconds"
            )
        return self

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file are set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        return self

    def on_cluster(self) -> Settings:
        """These settings for a Redis Cluster: `shards` is CLUSTER_SHARDS unless it was set."""
        if "shards" in self.model_fields_set:
            return self
        return self.model_copy(update={"shards": CLUSTER_SHARDS})

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'creditgate.db'}"
