"""Server settings: command-line flags over ``IMG2IMG_SERVER_*`` environment variables over a TOML config file.

The config file is ``--config FILE`` (or ``IMG2IMG_SERVER_CONFIG``); its keys are the field names below, e.g.

    host = "127.0.0.1"
    port = 7860
    max_queued_total = 500
    tiers = { free = 0, pro = 10, max = 20 }
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from img2img.errors import InvalidArgument

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("img2img")) / "server"


class ServerSettings(BaseSettings):
    """Everything ``img2img serve`` can be told; each field is also ``IMG2IMG_SERVER_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="IMG2IMG_SERVER_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    model: str | None = None  # the default model; None: the registry's default, else the built-in style engine
    device: str = "auto"
    backend: str = "auto"
    quantize: str = "none"
    max_upload_bytes: int = Field(20 * 2**20, ge=1024)
    max_pixels: int = Field(16_000_000, ge=4096)
    max_memory: str | None = None  # the estimated peak one job may need ("12GB"); None: 90% of physical memory
    max_prompt_chars: int = Field(2000, ge=1)
    max_images_per_job: int = Field(8, ge=1, le=64)
    max_queued_per_key: int = Field(20, ge=1)
    max_queued_total: int = Field(200, ge=1)
    max_attempts: int = Field(2, ge=1, le=10)
    # The worker process's CPU priority below the server's (Unix nice): on a busy machine the API answers first,
    # and the worker still has every core that nothing else wants. 0 gives both the same share.
    worker_niceness: int = Field(5, ge=0, le=19)
    cors_origins: list[str] = Field(default_factory=list)
    tiers: dict[str, int] = Field(default_factory=lambda: {"free": 0, "pro": 10, "max": 20})
    default_tier: str = "free"
    preview_side: int = Field(96, ge=16, le=512)
    # Run jobs on a Ray cluster's workers instead of the local worker process (see img2img.cluster.dispatch):
    # auto, local, host:port or ray://host:port; None runs them here and never imports Ray.
    ray: str | None = None
    ray_workers: int | None = Field(None, ge=1)  # None: one per GPU, or per cpus_per_worker cores of each node
    cpus_per_worker: int | None = Field(None, ge=1)  # None: 8, or a whole smaller node

    @field_validator("tiers")
    @classmethod
    def _some_tier(cls, tiers: dict[str, int]) -> dict[str, int]:
        if not tiers:
            raise ValueError("at least one tier is needed")
        return tiers

    @property
    def database(self) -> Path:
        return self.data_dir / "img2img.db"

    def tier_rank(self, tier: str) -> int:
        return self.tiers.get(tier, min(self.tiers.values()))


def load_settings(config: Path | None = None, **overrides: Any) -> ServerSettings:
    """Settings from ``config`` (or ``$IMG2IMG_SERVER_CONFIG``), the environment and ``overrides`` (flags)."""
    config = config or (Path(os.environ["IMG2IMG_SERVER_CONFIG"]) if os.environ.get("IMG2IMG_SERVER_CONFIG")
                        else None)
    from_file: dict[str, Any] = {}
    if config is not None:
        try:
            from_file = tomllib.loads(config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument("config", "a readable TOML file", f"{config} ({exc})") from exc
    explicit = {key: value for key, value in overrides.items() if value is not None}
    # The environment beats the file and flags beat both: pass the file's values only where neither is set.
    environment = {name for name in ServerSettings.model_fields if f"IMG2IMG_SERVER_{name.upper()}" in os.environ}
    values = {key: value for key, value in from_file.items() if key not in environment} | explicit
    from pydantic import ValidationError

    try:
        return ServerSettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "settings"
        raise InvalidArgument(field, first["msg"].lower(), repr(first.get("input"))) from exc
