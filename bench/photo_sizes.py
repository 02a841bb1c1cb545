"""The OpenVINO UNet at photo sizes: traced at an odd latent size (ours) against the old even trace, in one run.

For each trace it converts the full SD 1.5 UNet (random weights) to bf16 IR in its own temporary cache, then times
the first call at each latent size (compilation included) and the best of three steps after it, at batch 2 (CFG).
The even trace fails at sizes that are not multiples of 8 latent pixels; that is recorded, not raised.

    .venv/bin/python bench/photo_sizes.py [--sizes 64x64,37x56,50x75]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from random_models import random_model


def measure(trace_side: int, sizes: list[tuple[int, int]]) -> dict[str, object]:
    from diffusers import StableDiffusionImg2ImgPipeline

    from img2img.models import ov_runtime

    os.environ["IMG2IMG_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"photo-sizes-{trace_side}-")
    ov_runtime.EXAMPLE_LATENT_SIDE = trace_side
    pipeline = StableDiffusionImg2ImgPipeline.from_pretrained(
        random_model("sd15"), dtype=torch.float32, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    key = f"{trace_side:02d}" * 32
    started = time.perf_counter()
    ov_runtime.export_ir(lambda part: getattr(pipeline, part), key, "bf16")
    figures: dict[str, object] = {"traced_at": trace_side, "convert_s": round(time.perf_counter() - started, 1)}

    def unavailable(part: str) -> torch.nn.Module:
        raise RuntimeError(f"OpenVINO cannot run the {part} at this size")

    ov_runtime.attach(pipeline, key, "bf16", unavailable)
    text = torch.zeros(2, 77, 768)
    for height, width in sizes:
        latents = torch.randn(2, 4, height, width)
        try:
            started = time.perf_counter()
            pipeline.unet(latents, 500, text)
            first = time.perf_counter() - started
            steps = []
            for _ in range(3):
                started = time.perf_counter()
                pipeline.unet(latents, 500, text)
                steps.append(time.perf_counter() - started)
            figures[f"{height}x{width}"] = {"first_call_s": round(first, 2), "step_s": round(min(steps), 2)}
        except RuntimeError as exc:
            figures[f"{height}x{width}"] = f"failed: {str(exc)[:100]}"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x64,37x56,50x75", help="latent HxW sizes, comma-separated")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    results = {"odd_trace": measure(15, sizes), "even_trace": measure(16, sizes),  # type: ignore[arg-type]
               "cpus": os.cpu_count(), "bench_dir": str(Path(random_model("sd15")).parent)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
