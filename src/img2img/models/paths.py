"""Where img2img keeps its files: the user's config and cache directories (overridable for tests and servers)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def config_dir() -> Path:
    """``$IMG2IMG_CONFIG_DIR``, else the platform's user config directory for img2img."""
    return Path(os.environ.get("IMG2IMG_CONFIG_DIR") or platformdirs.user_config_dir("img2img"))


def cache_dir() -> Path:
    """``$IMG2IMG_CACHE_DIR``, else the platform's user cache directory for img2img."""
    return Path(os.environ.get("IMG2IMG_CACHE_DIR") or platformdirs.user_cache_dir("img2img"))
