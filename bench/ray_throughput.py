"""Scale-out on Ray, measured in one run: a folder batch's throughput here, on one Ray worker and on two; what Ray
adds per image; how many jobs a second the queue store takes; and a paper plan for 8 GPU nodes.

    .venv/bin/python bench/ray_throughput.py [--images 4] [--steps 25] [--strength 0.6] [--side 512]

``batch``: ``img2img batch`` on ``--images`` real photos (scikit-image's astronaut, coffee and cat, at 512x512),
full-size SD 1.5 with random weights (``random_models.py``), the default backend; each run in its own process:
``here`` (no --ray), ``ray_1x2`` (one worker with both cores) and ``ray_2x1`` (two workers with one core each) on
a local cluster (``ray start --head``). A first one-image run converts the model for OpenVINO so that no timed run
does. ``overhead``: the tiny test model on a 512x512 photo (run at 128x128), 40 calls one after another to one
Ray worker against the same calls in this process: what Ray adds per image (packing, sending, scheduling, the
result's way back); and a 16-file batch here and on Ray: what joining the cluster and starting a worker cost once.
``store``: submit, claim, four progress writes and finish, on a real SQLite file, as fast as one thread can.
``plan``: images per second for 8 GPU nodes from a published per-step figure, and the number of workers at which
the store's measured rate is used up. The last line printed is one JSON object (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from cpu_speed import cpu_features, matmul_peaks
from random_models import random_model
from ray_cluster import local_cluster

# Published: out-of-the-box diffusers (torch 2.1, SDPA, fp16), SD 1.5 at 512x512, batch 1, on an A100 80GB SXM
# (fal-ai/stable-diffusion-benchmarks): 31.19 denoising steps a second.
A100_STEPS_PER_S = 31.19
GPU_NODES = 8
PROGRESS_WRITES_PER_S = 4  # jobs/book.py writes a running job's step at most every 0.25 s
SECONDS = re.compile(r"\s(\d+(?:\.\d+)?) s$")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="img2img-ray-bench-"))
    model = random_model("sd15")
    photos = _photos(work / "photos", args.images, args.side)
    job = ["--model", str(model), "--seed", "7", "--steps", str(args.steps), "--strength", str(args.strength)]
    _img2img("run", str(next(photos.iterdir())), "a watercolor", *job, "-o", str(work / "warm.png"))  # converts

    figures: dict[str, Any] = {"cpu": cpu_features(), "matmul_gflops": matmul_peaks(), "images": args.images,
                               "steps": args.steps, "strength": args.strength, "side": args.side}
    with local_cluster(work / "ray.log", num_cpus=os.cpu_count() or 2) as cluster:
        batch = {}
        for name, workers, extra in (
                ("here", 1, []), ("ray_1x2", 1, ["--ray", cluster.address, "--cpus-per-worker", "2"]),
                ("ray_2x1", 2, ["--ray", cluster.address, "--cpus-per-worker", "1"])):
            batch[name] = _batch(photos, work / name, "a watercolor", [*job, *extra], args.images, workers)
        figures["batch"] = batch
        figures["ratios"] = {name: round(batch[name]["images_per_min"] / batch["here"]["images_per_min"], 3)
                             for name in ("ray_1x2", "ray_2x1")}
        figures["overhead"] = _overhead(work, cluster.address)
    figures["store"] = _store(work / "store.db")
    figures["plan"] = _plan(figures, args)
    print(json.dumps(figures))


def _photos(folder: Path, count: int, side: int) -> Path:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True)
    pictures = [data.astronaut(), data.coffee(), data.chelsea()]
    for index in range(count):
        picture = Image.fromarray(pictures[index % len(pictures)]).resize((side, side), Image.LANCZOS)
        picture.save(folder / f"photo-{index:03d}.png")
    return folder


def _img2img(*args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "img2img", *args], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200", **(env or {})}, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"img2img {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - started, result.stdout


def _batch(photos: Path, output: Path, prompt: str, options: list[str], count: int, workers: int
           ) -> dict[str, Any]:
    wall, stdout = _img2img("batch", str(photos), prompt, "-o", str(output), *options)
    per_image = [float(match[1]) for line in stdout.splitlines() if (match := SECONDS.search(line))]
    assert len(per_image) == count, stdout
    mean = sum(per_image) / len(per_image)
    return {"wall_s": round(wall, 1), "images_per_min": round(60 * count / wall, 3),
            "image_s_mean": round(mean, 2), "steady_images_per_min": round(60 * workers / mean, 3),
            "workers": workers}


def _overhead(work: Path, address: str, calls: int = 40) -> dict[str, Any]:
    """Ray's own cost per image: ``calls`` round trips to one worker, one after another (nothing overlaps), against
    the same calls to an engine in this process; and the fixed cost of a batch on Ray (joining, starting the
    worker, loading the model there), from a batch of 16 files here and on Ray."""
    from img2img.api import Engine
    from img2img.cluster.connect import connected
    from img2img.cluster.parcel import pack
    from img2img.cluster.pool import Shape, start
    from img2img.cluster.workers import GenerationWorker
    from img2img.engine.request import GenerationRequest
    from tiny_models import build_tiny_sd

    tiny = build_tiny_sd(work / "tiny-sd")
    photos = _photos(work / "tiny-photos", 16, 512)
    request = GenerationRequest(source=next(photos.iterdir()), prompt="a boat", model=str(tiny), seed=1, steps=2,
                                size=(128, 128))  # the tiny model takes seconds at 512x512 (attention at full size)
    arguments = {"backend": "torch"}
    engine = Engine(**arguments)
    engine.generate(request)
    started = time.perf_counter()
    for _ in range(calls):
        engine.generate(request)
    here_s = (time.perf_counter() - started) / calls
    with connected(address) as ray:
        worker = start(ray, GenerationWorker, Shape(1, os.cpu_count() or 2, 0), (arguments, os.cpu_count() or 2))[0]
        ray.get(worker.generate.remote(0, pack(request), {}))
        started = time.perf_counter()
        for index in range(calls):
            ray.get(worker.generate.remote(index, pack(request), {}))
        ray_s = (time.perf_counter() - started) / calls
    job = ["--model", str(tiny), "--seed", "1", "--steps", "2", "--backend", "torch"]
    job += ["--size", "128x128"]
    batch_here = _img2img("batch", str(photos), "a boat", "-o", str(work / "tiny-here"), *job)[0]
    batch_ray = _img2img("batch", str(photos), "a boat", "-o", str(work / "tiny-ray"), *job, "--ray", address)[0]
    return {"calls": calls, "image_bytes": next(photos.iterdir()).stat().st_size,
            "here_ms": round(1000 * here_s, 1), "ray_ms": round(1000 * ray_s, 1),
            "ray_adds_per_image_ms": round(1000 * (ray_s - here_s), 1),
            "batch16_here_s": round(batch_here, 2), "batch16_ray_s": round(batch_ray, 2),
            "ray_fixed_s": round(batch_ray - batch_here, 2)}


def _store(path: Path, jobs: int = 2000) -> dict[str, Any]:
    from img2img.jobs.request import JobRequest
    from img2img.jobs.store import JobStore

    store = JobStore(path)
    request = JobRequest("a" * 64 + ".png", {"prompt": "a watercolor", "strength": 0.6})
    started = time.perf_counter()
    for _ in range(jobs):
        submitted = store.submit("bench", 0, request, max_per_owner=jobs, max_total=jobs)
        job = store.claim_next("bench")
        assert job is not None and job.id == submitted.id
        for step in range(1, 5):
            store.progress(job.id, step, 4)
        store.finish(job.id, "done", outputs=[{"image": "b" * 64 + ".png"}], lease=job.lease)
    seconds = time.perf_counter() - started
    store.close()
    return {"jobs": jobs, "jobs_per_s": round(jobs / seconds, 1), "writes_per_s": round(7 * jobs / seconds, 1)}


def _plan(figures: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Images per second for GPU_NODES nodes of one A100 each, and where the queue store becomes the limit."""
    steps_run = max(1, int(args.steps * args.strength))
    here = figures["batch"]["here"]
    cpu_share = 0.9  # assumed: the denoising steps' share of one image's time (VAE, text encoder: the rest)
    ray_s = max(0.0, figures["overhead"]["ray_adds_per_image_ms"] / 1000)
    gpu_image_s = steps_run / A100_STEPS_PER_S / cpu_share + ray_s
    cluster_images_per_s = GPU_NODES / gpu_image_s
    writes_per_job = 3 + PROGRESS_WRITES_PER_S * gpu_image_s  # submit, claim, finish, and the steps
    store_limit_workers = figures["store"]["writes_per_s"] / (writes_per_job / gpu_image_s)
    return {"gpu_steps_per_s_cited": A100_STEPS_PER_S, "steps_run": steps_run,
            "gpu_image_s": round(gpu_image_s, 3), "nodes": GPU_NODES,
            "images_per_s": round(cluster_images_per_s, 1), "images_per_hour": round(3600 * cluster_images_per_s),
            "cpu_node_image_s": here["image_s_mean"],
            "cpu_nodes_for_the_same": round(cluster_images_per_s * here["image_s_mean"]),
            "store_writes_per_s_needed": round(cluster_images_per_s * writes_per_job, 1),
            "store_limit_workers": round(store_limit_workers)}


if __name__ == "__main__":
    main()
