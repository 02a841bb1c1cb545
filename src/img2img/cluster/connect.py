"""Joining a Ray cluster: which address ``--ray`` takes, and the connection that a command holds while it runs."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from img2img.errors import InvalidArgument, ModelError

ADDRESS_HELP = ("auto (the RAY_ADDRESS variable, or a cluster started on this machine), local (start one in this "
                "process), host:port (a cluster's head) or ray://host:10001 (Ray Client)")
_HOST_PORT = re.compile(r"(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}")
# The workers see the driver's img2img and Hugging Face settings (folders, limits, the backend), so that a name
# means the same model on every node.
PROBE_TIMEOUT_S = 10.0
PASSED_ON = ("IMG2IMG_", "HF_", "TRANSFORMERS_", "DIFFUSERS_")


def check_address(address: str) -> str:
    """``address`` if ``--ray`` can take it (checked before anything starts), else InvalidArgument."""
    if address in ("auto", "local") or _HOST_PORT.fullmatch(address):
        return address
    raise InvalidArgument("ray", ADDRESS_HELP, address)


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as exc:
        raise ModelError("--ray needs Ray, which is not installed: pip install 'img2img[ray]'") from exc
    return ray


@contextmanager
def connected(address: str) -> Iterator[ModuleType]:
    """Ray, connected to the cluster at ``address`` until the block ends (a ``local`` one is shut down then)."""
    ray = import_ray()
    check_address(address)
    options: dict[str, Any] = {
        "logging_level": logging.ERROR, "log_to_driver": False,
        "runtime_env": {"env_vars": {name: value for name, value in os.environ.items()
                                     if name.startswith(PASSED_ON)}},
    }
    if address == "local":
        options |= {"address": "local", "include_dashboard": False}
    else:
        options["address"] = (os.environ.get("RAY_ADDRESS") or "auto") if address == "auto" else address
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing is sent anywhere
    _probe(options["address"])
    try:
        ray.init(**options)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        raise InvalidArgument("ray", f"the address of a running Ray cluster (start one with `ray start --head`), "
                              f"or local ({_first_line(exc)})", options["address"]) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _probe(address: str) -> None:
    """Refuse at once a host:port where nothing listens (Ray itself retries for minutes before it gives up)."""
    if not _HOST_PORT.fullmatch(address):
        return  # auto, local: Ray finds (or starts) the cluster on this machine and says so quickly
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise InvalidArgument("ray", "the address of a running Ray cluster (start one with `ray start --head`), "
                              f"or local (nothing answers at {host}:{port}: {exc.strerror or exc})", address) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
