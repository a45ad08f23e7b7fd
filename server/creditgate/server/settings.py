"""Settings, read and validated once from CREDITGATE_* environment variables into one frozen object."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the sidecar can be told; nothing else reads the environment."""

    model_config = SettingsConfigDict(env_prefix="CREDITGATE_", frozen=True, extra="ignore")

    listen: str = "127.0.0.1:50051"
    # Unset: an embedded redis-server is started in data_dir.
    redis_url: str | None = None
    # Unset: sqlite:///<data_dir>/creditgate.db
    database_url: str | None = None
    catalog: Path | None = None
    data_dir: Path = Path("data")
    # Customers are spread over this many Redis hash slots ({sN} tags); fixed for a deployment.
    shards: int = Field(default=8, ge=1, le=1024)
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)
    flush_interval_seconds: float = Field(default=0.2, gt=0, le=60)
    flush_batch_size: int = Field(default=500, ge=1, le=10_000)
    # A consumer's pending entries older than this are claimed by another flusher (XAUTOCLAIM).
    flush_claim_idle_seconds: float = Field(default=30.0, gt=0)
    top_up_priority: int = Field(default=20, ge=0, le=999)
    adjustment_priority: int = Field(default=30, ge=0, le=999)
    log_format: Literal["console", "json"] = "console"
    clock: Literal["system", "manual"] = "system"

    @field_validator("listen")
    @classmethod
    def _listen_has_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("listen must be host:port, e.g. 127.0.0.1:50051")
        return value

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'creditgate.db'}"
