"""How quickly the server answers while it works: the ``diffusion`` and ``a1111`` modes of ``server_load.py``.

``diffusion``: the full SD 1.5 architecture with random weights (``random_models.py``) is the server's default
model, with an empty conversion cache and the default backend. Three jobs run one after another: the first loads
the model (conversion included), the second finds it loaded, and the third runs on a restarted server, which loads
it from the conversion cache. While each runs, probes time job status, ``/sdapi/v1/progress``, health, an SSE
stream's first event and a small submission, back to back; each answer is filed under the phase the job was in
(``loading`` until its first step, then ``denoising``).

``a1111``: ``--waiters`` blocking ``POST /sdapi/v1/img2img`` calls from three keys (built-in engine) at once, with
health, progress and model-list probes running until the last call has its answer, filed under ``submitting``
until every call's job is stored, then ``waiting``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from server_load import percentiles, photo_bytes
from server_process import FINAL, ServerProcess, b64

PROBE_PAUSE_S = 0.05
PROBE_TIMEOUT_S = 60.0


class Probes:
    """Threads that call endpoints back to back and file each latency under the phase current at the call."""

    def __init__(self, server: ServerProcess, key: str | None = None) -> None:
        self.server, self.key = server, key
        self.phase = "idle"
        self.samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def add(self, name: str, call: Callable[[httpx.Client], Any], pause_s: float = PROBE_PAUSE_S) -> None:
        def loop() -> None:
            with self.server.client(self.key) as http:
                while not self._stop.is_set():
                    phase, began = self.phase, time.perf_counter()
                    try:
                        call(http)
                        elapsed = time.perf_counter() - began
                    except (httpx.HTTPError, AssertionError) as exc:
                        elapsed = time.perf_counter() - began
                        with self._lock:
                            self.failures.append(f"{name}: {type(exc).__name__} {str(exc)[:120]}")
                    with self._lock:
                        self.samples[phase][name].append(elapsed)
                    self._stop.wait(pause_s)

        thread = threading.Thread(target=loop, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for thread in self._threads:
            thread.join(PROBE_TIMEOUT_S + 5)
        return {phase: {name: percentiles(values) for name, values in probes.items()}
                for phase, probes in self.samples.items()} | {"failures": self.failures[:5],
                                                              "failure_count": len(self.failures)}


def _ok(response: httpx.Response, *codes: int) -> httpx.Response:
    assert response.status_code in (codes or (200,)), f"{response.status_code} {response.text[:200]}"
    return response


def _sse_first_event(job_id: Callable[[], str | None]) -> Callable[[httpx.Client], None]:
    def call(http: httpx.Client) -> None:
        target = job_id()
        if target is None:
            return
        with http.stream("GET", f"/v1/jobs/{target}/events", timeout=PROBE_TIMEOUT_S) as response:
            _ok(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    return

    return call


def diffusion(args: argparse.Namespace) -> dict[str, Any]:
    from img2img.models.registry import ModelEntry, ModelRegistry
    from random_models import random_model

    model = random_model("sd15")
    root = Path(tempfile.mkdtemp(prefix="img2img-latency-"))
    ModelRegistry(root / "config").add(ModelEntry("sd15", str(model)))
    env = {"IMG2IMG_CACHE_DIR": str(root / "cache"), "IMG2IMG_BACKEND": "auto"}
    server = ServerProcess(root / "data", root / "config", env=env, max_queued_per_key=1000, max_queued_total=1000)
    source, small = b64(photo_bytes(args.side)), b64(photo_bytes(64))
    jobs = [("first_load", True), ("loaded", False), ("cache_load", True)]
    report: dict[str, Any] = {"source_side": args.side, "steps": args.steps, "strength": 0.6}
    for index, (name, restart) in enumerate(jobs):
        if restart:
            server.stop()
            server.start(timeout_s=300)
        report[name] = _timed_job(server, source, small, seed=index + 1, steps=args.steps)
    server.stop()
    return {"server_latency_diffusion": report}


def _timed_job(server: ServerProcess, source: str, small: str, seed: int, steps: int) -> dict[str, Any]:
    probes = Probes(server)
    current: dict[str, Any] = {"id": None, "state": None, "step": 0}

    def status(http: httpx.Client) -> None:
        if current["id"] is None:
            return
        job = _ok(http.get(f"/v1/jobs/{current['id']}", timeout=PROBE_TIMEOUT_S)).json()
        current["state"], current["step"] = job["state"], job["progress"]["step"]
        if job["state"] == "running":
            probes.phase = "loading" if job["progress"]["step"] == 0 else "denoising"
        elif job["state"] in FINAL:
            probes.phase = "after"

    def submit(http: httpx.Client) -> None:
        _ok(http.post("/v1/jobs", json={"source": small, "model": "builtin", "prompt": "fauve", "seed": seed},
                      timeout=PROBE_TIMEOUT_S), 202)

    probes.add("status", status, pause_s=0.02)
    probes.add("progress", lambda http: _ok(http.get("/sdapi/v1/progress", timeout=PROBE_TIMEOUT_S)))
    probes.add("health", lambda http: _ok(http.get("/v1/health", timeout=PROBE_TIMEOUT_S)))
    probes.add("sse_first_event", _sse_first_event(lambda: current["id"]))
    probes.add("submit", submit, pause_s=2.0)
    began = time.perf_counter()
    with server.client() as http:
        job = _ok(http.post("/v1/jobs", json={"source": source, "prompt": "a red fox, oil painting", "seed": seed,
                                              "steps": steps, "strength": 0.6}), 202).json()
        current["id"] = job["id"]
        while current["state"] not in FINAL and time.perf_counter() - began < 3600:
            time.sleep(0.2)
        final = http.get(f"/v1/jobs/{job['id']}").json()
    seconds = time.perf_counter() - began
    latencies = probes.stop()
    return {"state": final["state"], "error": final["error"], "seconds": round(seconds, 1), "latency": latencies}


def a1111(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="img2img-latency-"))
    server = ServerProcess(root / "data", root / "config", model="builtin", max_queued_per_key=args.waiters,
                           max_queued_total=args.waiters * 2)
    keys = [server.command("keys", "add", name, "--tier", tier).stdout.strip()
            for name, tier in (("a", "free"), ("b", "pro"), ("c", "max"))]
    server.start()
    source = b64(photo_bytes(args.side))
    probes = Probes(server, keys[0])
    probes.phase = "submitting"  # until every call's job is in the store; then only waiting is left
    probes.add("health", lambda http: _ok(http.get("/v1/health", timeout=PROBE_TIMEOUT_S)))
    probes.add("progress", lambda http: _ok(http.get("/sdapi/v1/progress", timeout=PROBE_TIMEOUT_S)))
    probes.add("models", lambda http: _ok(http.get("/v1/models", timeout=PROBE_TIMEOUT_S)))
    answers: list[tuple[int, float]] = []
    lock = threading.Lock()

    def waiter(index: int) -> None:
        with server.client(keys[index % 3]) as http:
            began = time.perf_counter()
            try:
                code = http.post("/sdapi/v1/img2img", json={"init_images": [source], "prompt": "fauve", "seed": index,
                                                            "denoising_strength": 0.8}, timeout=1800).status_code
            except httpx.HTTPError:
                code = 0
            with lock:
                answers.append((code, time.perf_counter() - began))

    def stored() -> None:
        clients = [server.client(key) for key in keys]
        while sum(len(http.get("/v1/jobs", params={"limit": 200}).json()["jobs"]) for http in clients) < args.waiters:
            time.sleep(0.25)
        probes.phase = "waiting"
        for http in clients:
            http.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(args.waiters)]
    for thread in [*threads, threading.Thread(target=stored, daemon=True)]:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    latencies = probes.stop()
    server.stop()
    codes = sorted({code for code, _ in answers})
    return {"server_latency_a1111": {
        "waiters": args.waiters, "source_side": args.side, "answered_200": sum(code == 200 for code, _ in answers),
        "codes": codes, "seconds": round(seconds, 1), "call_seconds": percentiles([s for _, s in answers]),
        "latency": latencies}}


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    return diffusion(args) if mode == "diffusion" else a1111(args)


if __name__ == "__main__":
    raise SystemExit("run it through server_load.py --mode diffusion|a1111")
