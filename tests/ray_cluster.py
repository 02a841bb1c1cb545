"""A real local Ray cluster for the tests: ``ray start --head --block`` on free ports, stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def _free_port(avoid: range = range(10000, 20000)) -> int:
    """A free port outside Ray's range for its worker processes."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


@dataclass(frozen=True)
class Cluster:
    address: str  # 127.0.0.1:PORT
    session: int  # the session id of its processes (``ray start``'s pid)

    def actor_pids(self, name: str) -> list[int]:
        """The processes of this cluster's Ray actors of the class ``name`` (Ray titles them ``ray::NAME``)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes()
                session = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
            except (OSError, IndexError, ValueError):
                continue
            if command.startswith(f"ray::{name}".encode()) and session == self.session:
                found.append(int(entry.name))
        return found


@contextlib.contextmanager
def local_cluster(log: Path, num_cpus: int = 2) -> Iterator[Cluster]:
    """A head node with ``num_cpus`` CPUs on 127.0.0.1, until the block ends."""
    port = _free_port()
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address",
               "127.0.0.1", "--port", str(port), "--num-cpus", str(num_cpus), "--num-gpus", "0",
               "--include-dashboard", "false", "--disable-usage-stats",
               "--ray-client-server-port", str(_free_port())]
    # Ray turns token authentication on by itself once ~/.ray/auth_token exists (ray.init(address="local") writes
    # one): the tests' cluster on 127.0.0.1 stays without, whatever an earlier run left in the home folder.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        _wait_ready(process, address, log)
        yield Cluster(address, process.pid)
    finally:
        _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], address: str, log: Path, timeout_s: float = 120.0) -> None:
    ray = Path(sys.executable).with_name("ray")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        status = subprocess.run([str(ray), "status", "--address", address], capture_output=True, text=True,
                                timeout=60, check=False)
        if status.returncode == 0 and "CPU" in status.stdout:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the Ray cluster at {address} did not start in {timeout_s} s:\n{log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to ``ray start --block`` and its processes (GCS, raylet, workers), then SIGKILL to what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)

