"""Structure control on the CPU: img2img's engine with one ControlNet against stock diffusers' ControlNet img2img
pipeline, and what a unit that ends halfway costs, measured in one run.

    .venv/bin/python bench/control_speed.py [--jobs control,window] [--repeats 2]

Full-size SD 1.5 and a full-size ControlNet (the UNet's encoder copied, as ControlNet training starts; its zero
convolutions given small random weights so that it acts), random weights (``bench/random_models.py``), 512x512,
strength 0.75, 20 steps (15 run). Each (job, implementation) runs in its own process: one warm-up call, then
``repeats`` timed calls. The last line printed is one JSON object (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cpu_speed import PROMPT, SEED, Timer, build_model, demo_photo, matmul_peaks, psnr
from cpu_speed import run_worker as run_script

STEPS, CFG, SAMPLER, STRENGTH, SIDE = 20, 7.5, "DPM++ 2M Karras", 0.75, 512
JOBS: dict[str, tuple[str, ...]] = {
    "control": ("stock", "ours"),  # one ControlNet unit over every step
    "window": ("ours-plain", "ours-half", "ours"),  # no unit, a unit that ends at 0.5, a unit over every step
}


def random_controlnet() -> Path:
    """A ControlNet for the random SD 1.5 (``random_model("sd15")``), built on first use."""
    import diffusers
    import torch

    from random_models import bench_dir, random_model

    target = bench_dir() / "sd15-controlnet"
    if (target / "config.json").is_file():
        return target
    unet = diffusers.UNet2DConditionModel.from_pretrained(random_model("sd15") / "unet")
    net = diffusers.ControlNetModel.from_unet(unet)
    torch.manual_seed(1)
    with torch.no_grad():
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            block.weight.normal_(0, 0.02)
    net.to(torch.float16).save_pretrained(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="control,window")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("JOB", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build-controlnet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_controlnet:
        random_controlnet()
        return
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.out)))
        return
    report: dict[str, Any] = {"matmul_peak_gflops": matmul_peaks(), "steps": STEPS, "cfg": CFG, "sampler": SAMPLER,
                              "strength": STRENGTH, "side": SIDE}
    print(json.dumps(report), flush=True)
    build_model("sd15")
    # In its own process: building it takes gigabytes, and a worker would inherit this process's peak as its own.
    subprocess.run([sys.executable, __file__, "--build-controlnet"], check=True)
    for job in args.jobs.split(","):
        results, outputs = {}, {}
        for impl in JOBS[job]:
            if impl.startswith("ours"):  # convert for OpenVINO once, outside the measured process
                run_script(job, impl, 0, Path(tempfile.mkdtemp()) / "x.npy", __file__)
            out = Path(tempfile.mkdtemp()) / f"{job}-{impl}.npy"
            results[impl] = run_script(job, impl, args.repeats, out, __file__)
            outputs[impl] = np.load(out)
            print(json.dumps({job: {impl: results[impl]}}), flush=True)
        if job == "control":
            results["ratio_stock_over_ours"] = round(results["stock"]["e2e_s"] / results["ours"]["e2e_s"], 2)
            results["psnr_ours_vs_stock_db"] = psnr(outputs["ours"], outputs["stock"])
        else:
            plain, half, full = (results[impl]["e2e_s"] for impl in JOBS[job])
            results["controlnet_cost_full_s"] = round(full - plain, 2)
            results["controlnet_cost_half_s"] = round(half - plain, 2)
            results["half_over_full_cost"] = round((half - plain) / (full - plain), 2) if full > plain else None
        report[job] = results
        print(json.dumps({job: results}), flush=True)
    print(json.dumps(report), flush=True)


def worker(job: str, impl: str, repeats: int, out: Path) -> dict[str, Any]:
    from random_models import random_model

    folder, controlnet = random_model("sd15"), random_controlnet()
    source = demo_photo(SIDE)
    edges = _edges(source)
    started = time.perf_counter()
    run, unet, net = (stock_runner if impl == "stock" else ours_runner)(folder, controlnet, source, edges, impl)
    load_s = time.perf_counter() - started
    if repeats == 0:
        np.save(out, np.zeros(1))
        return {"load_s": round(load_s, 1)}
    timers = {"unet": Timer(), "controlnet": Timer()}
    timers["unet"].wrap(unet, "forward")
    if net is not None:
        timers["controlnet"].wrap(net, "forward")
    run()
    for timer in timers.values():
        timer.seconds.clear()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        image = run()
        seconds.append(time.perf_counter() - started)
    np.save(out, np.asarray(image.convert("RGB"), dtype=np.uint8))
    return {"e2e_s": round(statistics.median(seconds), 2), "e2e_all_s": [round(s, 2) for s in seconds],
            "unet_step_s": timers["unet"].median(), "controlnet_call_s": timers["controlnet"].median(),
            "controlnet_calls": len(timers["controlnet"].seconds) // repeats,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def _edges(source: Any) -> Any:
    from img2img.engine.preprocessors import preprocess

    return preprocess("canny", source)


def stock_runner(folder: Path, controlnet: Path, source: Any, edges: Any, impl: str) -> tuple[Any, Any, Any]:
    """diffusers' own ControlNet img2img pipeline in fp32, as a user would run it, with the same sampler."""
    import diffusers
    import torch

    from img2img.engine.samplers import build_scheduler

    net = diffusers.ControlNetModel.from_pretrained(controlnet, torch_dtype=torch.float32)
    pipeline = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        folder, controlnet=net, torch_dtype=torch.float32, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipeline.scheduler = build_scheduler(SAMPLER, dict(pipeline.scheduler.config), SEED)
    pipeline.set_progress_bar_config(disable=True)

    def run() -> Any:
        return pipeline(prompt=PROMPT, image=source, control_image=edges, strength=STRENGTH, guidance_scale=CFG,
                        num_inference_steps=STEPS, controlnet_conditioning_scale=1.0,
                        generator=torch.Generator().manual_seed(SEED)).images[0]

    return run, pipeline.unet, net


def ours_runner(folder: Path, controlnet: Path, source: Any, edges: Any, impl: str) -> tuple[Any, Any, Any]:
    from img2img import ControlUnit, Engine, GenerationRequest

    engine = Engine(device="cpu")  # the defaults: OpenVINO, bf16 where the CPU has it
    loaded = engine.load(str(folder))
    units = () if impl == "ours-plain" else (ControlUnit(model=controlnet, image=edges,
                                                         end=0.5 if impl == "ours-half" else 1.0),)
    request = GenerationRequest(source=source, prompt=PROMPT, strength=STRENGTH, guidance_scale=CFG, steps=STEPS,
                                sampler=SAMPLER, seed=SEED, model=str(folder), control=units)
    engine.generate(request)  # loads the ControlNet into the part cache
    net = engine.parts.newest() if units else None
    return (lambda: engine.generate(request).images[0]), loaded.pipeline.unet, net


if __name__ == "__main__":
    main()
