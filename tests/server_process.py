"""A real ``img2img serve`` process on a free local port, and small HTTP helpers for the server tests."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FINAL = ("done", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m img2img serve`` with its own data and config folders; the log goes to ``data_dir/server.log``."""

    def __init__(self, data_dir: Path, config_dir: Path, env: dict[str, str] | None = None, **settings: Any) -> None:
        self.data_dir, self.config_dir, self.settings = data_dir, config_dir, settings
        self.extra_env = env or {}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another ``img2img`` command (``keys add``, ...) against the same data and config."""
        return subprocess.run([sys.executable, "-m", "img2img", *args, "--data-dir", str(self.data_dir)],
                              env=self._env(), capture_output=True, text=True, timeout=120, check=False)

    def start(self, timeout_s: float = 90.0) -> ServerProcess:
        self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "img2img", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            env=self._env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code in (200, 401):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer in {timeout_s} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine loses power or the OOM killer strikes."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)

    def worker_pid(self, other_than: int | None = None, timeout_s: float = 120.0) -> int:
        """The pid of the server's worker process (a spawned child; not multiprocessing's resource tracker)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    command = (entry / "cmdline").read_bytes()
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == self.process.pid and b"spawn_main" in command and int(entry.name) != other_than:
                    return int(entry.name)
            time.sleep(0.1)
        raise AssertionError(f"no worker process under the server:\n{self.log()}")

    def log(self) -> str:
        path = self.data_dir / "server.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("IMG2IMG_SERVER_")}
        env["IMG2IMG_CONFIG_DIR"] = str(self.config_dir)
        env["IMG2IMG_BACKEND"] = "torch"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        for name, value in self.settings.items():
            env[f"IMG2IMG_SERVER_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        return env


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def submit(client: httpx.Client, source: bytes, expect: int = 202, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"source": b64(source), **fields})
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_final(client: httpx.Client, job_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in FINAL:
            return job  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s: {job}")


def wait_state(client: httpx.Client, job_id: str, state: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == state:
            return job  # type: ignore[no-any-return]
        assert job["state"] not in FINAL, f"job {job_id} ended {job['state']} while waiting for {state}: {job}"
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never became {state}")


def events(client: httpx.Client, job_id: str, timeout_s: float = 120.0) -> Iterator[tuple[str, dict[str, Any]]]:
    """The job's server-sent events as (name, data) until the stream ends."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout_s) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name, data = None, []
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
            elif not line and name:
                yield name, json.loads("\n".join(data))
                name, data = None, []


def image_from(data: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def serving_tiny(tmp_path_factory: Any, tiny_sd: Path, name: str, **settings: Any) -> Iterator[ServerProcess]:
    """A started server whose registry holds the tiny model as "tiny"; stopped when the generator is closed."""
    from img2img.models.registry import ModelEntry, ModelRegistry

    config = tmp_path_factory.mktemp(f"{name}-config")
    ModelRegistry(config).add(ModelEntry("tiny", str(tiny_sd)))
    process = ServerProcess(tmp_path_factory.mktemp(f"{name}-data"), config, **settings)
    process.start()
    yield process
    process.stop()
