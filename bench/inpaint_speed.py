"""Inpainting on the CPU: img2img's engine against stock diffusers' inpaint pipeline, and "only masked" on a big
photo against a plain 512x512 job, measured in one run.

    .venv/bin/python bench/inpaint_speed.py [--jobs inpaint9,inpaint4,only-masked] [--repeats 2]

Full-size SD 1.5 architectures with random weights (``bench/random_models.py``): a 9-channel inpainting UNet
(inpaint9) and the regular one, which inpaints by blending the kept area back after every step (inpaint4). Each
(job, implementation) runs in its own process: one warm-up call, then ``repeats`` timed calls. The last line
printed is one JSON object (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cpu_speed import PROMPT, SEED, Timer, build_model, demo_photo, matmul_peaks, psnr
from cpu_speed import run_worker as run_script

STEPS, CFG, SAMPLER = 20, 7.5, "DPM++ 2M Karras"
JOBS: dict[str, dict[str, Any]] = {
    # SD 1.5 inpainting at 512x512, the centre 256x256 repainted from pure noise (strength 1, 20 steps).
    "inpaint9": {"model": "sd15-inpainting", "side": 512, "strength": 1.0, "box": (128, 128, 384, 384),
                 "impls": ("stock", "ours")},
    # A regular SD 1.5 UNet at 512x512, the same mask at strength 0.75 (15 steps run).
    "inpaint4": {"model": "sd15", "side": 512, "strength": 0.75, "box": (128, 128, 384, 384),
                 "impls": ("stock", "ours")},
    # A 3000x2000 photo with a 300x300 mask, only masked (the box and 32 px around it at 512x512), against a plain
    # img2img job at 512x512 with the same steps.
    "only-masked": {"model": "sd15", "side": 0, "size": (3000, 2000), "strength": 0.75,
                    "box": (1700, 600, 2000, 900), "impls": ("ours-512", "ours")},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="inpaint9,inpaint4,only-masked")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("JOB", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.out)))
        return
    report: dict[str, Any] = {"matmul_peak_gflops": matmul_peaks(), "steps": STEPS, "cfg": CFG, "sampler": SAMPLER}
    print(json.dumps(report), flush=True)
    for job in args.jobs.split(","):
        spec = JOBS[job]
        build_model(spec["model"])
        results, outputs = {}, {}
        for impl in spec["impls"]:
            if impl.startswith("ours"):  # convert for OpenVINO once, outside the measured process
                run_script(job, impl, 0, Path(tempfile.mkdtemp()) / "x.npy", __file__)
            out = Path(tempfile.mkdtemp()) / f"{job}-{impl}.npy"
            results[impl] = run_script(job, impl, args.repeats, out, __file__)
            outputs[impl] = np.load(out)
            print(json.dumps({job: {impl: results[impl]}}), flush=True)
        first, second = spec["impls"]
        results[f"ratio_{first}_over_{second}"] = round(results[first]["e2e_s"] / results[second]["e2e_s"], 2)
        if first == "stock":
            box = spec["box"]
            results["psnr_inside_mask_db"] = psnr(outputs["ours"][box[1]:box[3], box[0]:box[2]],
                                                  outputs["stock"][box[1]:box[3], box[0]:box[2]])
        report[job] = results
        print(json.dumps({job: results}), flush=True)
    print(json.dumps(report), flush=True)


def worker(job: str, impl: str, repeats: int, out: Path) -> dict[str, Any]:
    from PIL import Image

    from random_models import random_model

    spec = JOBS[job]
    folder = random_model(spec["model"])
    source = demo_photo(spec["side"]) if spec["side"] else demo_photo(512).resize(spec["size"], Image.LANCZOS)
    mask = Image.new("L", source.size, 0)
    mask.paste(255, spec["box"])
    started = time.perf_counter()
    run, unet = (stock_runner if impl == "stock" else ours_runner)(folder, spec, source, mask, impl)
    load_s = time.perf_counter() - started
    if repeats == 0:
        np.save(out, np.zeros(1))
        return {"load_s": round(load_s, 1)}
    timer = Timer()
    timer.wrap(unet, "forward")
    run()
    timer.seconds.clear()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        image = run()
        seconds.append(time.perf_counter() - started)
    np.save(out, np.asarray(image.convert("RGB"), dtype=np.uint8))
    return {"e2e_s": round(statistics.median(seconds), 2), "e2e_all_s": [round(s, 2) for s in seconds],
            "unet_step_s": timer.median(), "unet_calls": len(timer.seconds) // repeats,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def stock_runner(folder: Path, spec: dict[str, Any], source: Any, mask: Any, impl: str) -> tuple[Any, Any]:
    """diffusers' own inpaint pipeline in fp32, as a user would run it, with the same sampler."""
    import diffusers
    import torch

    from img2img.engine.samplers import build_scheduler

    pipeline = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
        folder, torch_dtype=torch.float32, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.scheduler = build_scheduler(SAMPLER, dict(pipeline.scheduler.config), SEED)
    pipeline.set_progress_bar_config(disable=True)

    def run() -> Any:
        return pipeline(prompt=PROMPT, image=source, mask_image=mask, strength=spec["strength"], guidance_scale=CFG,
                        num_inference_steps=STEPS, height=source.height, width=source.width,
                        generator=torch.Generator().manual_seed(SEED)).images[0]

    return run, pipeline.unet


def ours_runner(folder: Path, spec: dict[str, Any], source: Any, mask: Any, impl: str) -> tuple[Any, Any]:
    from img2img import Engine, GenerationRequest, Inpaint

    engine = Engine(device="cpu")  # the defaults: OpenVINO, bf16 where the CPU has it
    loaded = engine.load(str(folder))
    fields = {"prompt": PROMPT, "strength": spec["strength"], "guidance_scale": CFG, "steps": STEPS,
              "sampler": SAMPLER, "seed": SEED, "model": str(folder)}
    if impl == "ours-512":  # the plain job that "only masked" should come close to
        request = GenerationRequest(source=source.crop((0, 0, 512, 512)), **fields)
    else:
        area = "masked" if spec["side"] == 0 else "whole"
        request = GenerationRequest(source=source, **fields, size=None if area == "masked" else source.size,
                                    inpaint=Inpaint(mask=mask, mask_blur=0 if area == "whole" else 4,
                                                    inpaint_area=area))
    return (lambda: engine.generate(request).images[0]), loaded.pipeline.unet


if __name__ == "__main__":
    main()
