"""Load check of the server: many concurrent clients submit jobs while status reads are timed.

``--mode builtin`` (the default) starts a real ``img2img serve`` (built-in style engine, keys in four tiers), lets
``--clients`` threads submit ``--jobs`` jobs in all (each with its own seed) while ``--pollers`` threads read job
status without pause until the queue has drained, then checks that every submitted job ran exactly once and
produced its image. ``--mode diffusion`` and ``--mode a1111`` time the API while a diffusion model loads and runs,
and while many A1111 clients wait for their jobs (``server_latency.py``). Each prints one JSON object as its last
line.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from server_process import ServerProcess, b64

KEYS = (("free-1", "free"), ("free-2", "free"), ("pro", "pro"), ("max", "max"))


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {}

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 2)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 2),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2), "count": len(ordered)}


def photo_bytes(side: int) -> bytes:
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((side, side), Image.LANCZOS).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument("--side", type=int, default=256, help="source side in pixels")
    parser.add_argument("--mode", choices=("builtin", "diffusion", "a1111"), default="builtin")
    parser.add_argument("--waiters", type=int, default=75, help="a1111: concurrent blocking img2img calls")
    parser.add_argument("--steps", type=int, default=10, help="diffusion: steps of each job (strength 0.6)")
    args = parser.parse_args()
    if args.mode != "builtin":
        from server_latency import run_mode

        print(json.dumps(run_mode(args.mode, args)))
        return

    root = Path(tempfile.mkdtemp(prefix="img2img-load-"))
    server = ServerProcess(root / "data", root / "config", model="builtin", max_queued_total=args.jobs,
                           max_queued_per_key=args.jobs)
    keys = {}
    for name, tier in KEYS:
        made = server.command("keys", "add", name, "--tier", tier)
        keys[name] = made.stdout.strip()
    server.start()
    source = b64(photo_bytes(args.side))

    submitted: list[tuple[str, str, int]] = []  # (key name, job id, seed)
    submit_times: list[float] = []
    refused: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        name = KEYS[index % len(KEYS)][0]
        with server.client(keys[name]) as http:
            for seed in range(index, args.jobs, args.clients):
                began = time.perf_counter()
                response = http.post("/v1/jobs", json={"source": source, "model": "builtin", "prompt": "fauve",
                                                       "strength": 0.8, "seed": seed})
                elapsed = time.perf_counter() - began
                with lock:
                    submit_times.append(elapsed)
                    if response.status_code == 202:
                        submitted.append((name, response.json()["id"], seed))
                    else:
                        refused.append(f"{response.status_code} {response.text[:200]}")

    status_times: list[float] = []
    draining = threading.Event()

    def poller(index: int) -> None:
        name = KEYS[index % len(KEYS)][0]
        with server.client(keys[name]) as http:
            while not draining.is_set():
                with lock:
                    mine = [job_id for owner, job_id, _ in submitted if owner == name]
                target = f"/v1/jobs/{mine[len(mine) // 2]}" if mine else "/v1/health"
                began = time.perf_counter()
                http.get(target, timeout=30).raise_for_status()
                with lock:
                    status_times.append(time.perf_counter() - began)

    started = time.perf_counter()
    pollers = [threading.Thread(target=poller, args=(i,)) for i in range(args.pollers)]
    clients = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in pollers + clients:
        thread.start()
    for thread in clients:
        thread.join()
    submit_s = time.perf_counter() - started
    finals = wait_all(server, keys, submitted)
    draining.set()
    for thread in pollers:
        thread.join()
    drain_s = time.perf_counter() - started
    server.stop()

    report = check(server, submitted, finals)
    report |= {"jobs": args.jobs, "clients": args.clients, "pollers": args.pollers, "source_side": args.side,
               "refused": len(refused), "refusals": refused[:3], "submit_s": round(submit_s, 2),
               "drain_s": round(drain_s, 2), "jobs_per_s": round(len(submitted) / drain_s, 2),
               "submit_latency": percentiles(submit_times), "status_latency": percentiles(status_times)}
    print(json.dumps({"server_load": report}))


def wait_all(server: ServerProcess, keys: dict[str, str], submitted: list[tuple[str, str, int]],
             timeout_s: float = 1800.0) -> dict[str, dict[str, Any]]:
    finals: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    clients = {name: server.client(key) for name, key in keys.items()}
    while len(finals) < len(submitted) and time.monotonic() < deadline:
        for owner, job_id, _ in submitted:
            if job_id not in finals:
                job = clients[owner].get(f"/v1/jobs/{job_id}").json()
                if job["state"] in ("done", "failed", "cancelled"):
                    finals[job_id] = job
        time.sleep(0.5)
    for http in clients.values():
        http.close()
    return finals


def check(server: ServerProcess, submitted: list[tuple[str, str, int]],
          finals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Lost: a submitted job missing or not done; duplicated: a seed produced twice or a job run twice."""
    with sqlite3.connect(server.data_dir / "img2img.db") as db:
        rows = db.execute("SELECT id, state, attempts FROM jobs").fetchall()
    stored = {row[0]: row for row in rows}
    seeds = [image["seed"] for job in finals.values() for image in job["images"]]
    images_on_disk = sum(1 for _ in (server.data_dir / "images").rglob("*.png"))
    return {
        "accepted": len(submitted), "stored": len(stored),
        "done": sum(job["state"] == "done" for job in finals.values()),
        "lost": sum(1 for _, job_id, _ in submitted if job_id not in stored or finals.get(job_id, {}).get("state")
                    != "done"),
        "duplicated": (len(seeds) - len(set(seeds))) + sum(1 for row in rows if row[2] != 1)
        + (len(stored) - len({job_id for _, job_id, _ in submitted})),
        "png_files": images_on_disk,
    }


if __name__ == "__main__":
    main()
