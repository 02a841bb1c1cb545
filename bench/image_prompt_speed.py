"""Image prompts on the CPU: what one IP-Adapter image prompt costs on top of the plain SD 1.5 img2img job, and
what encoding the picture costs, measured in one run.

    .venv/bin/python bench/image_prompt_speed.py [--impls plain,image-prompt,stock] [--repeats 2]

Full-size SD 1.5 and a full-size plain IP-Adapter for it (ViT-H/14 image encoder, 4 image tokens, a key and value
projection per cross-attention layer), random weights (``bench/random_models.py``), 512x512, strength 0.75,
20 steps (15 run). ``plain``: our engine with no image prompt; ``image-prompt``: the same job with one picture;
``stock``: diffusers' img2img pipeline with ``load_ip_adapter``, in float32. Each runs in its own process (after a
process of its own has converted what OpenVINO needs): one warm-up call (which encodes the picture; the engine
keeps its embedding), then ``repeats`` timed calls. The last line printed is one JSON object (see
bench/README.md).
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
IMPLS = ("plain", "image-prompt", "stock")
ENCODER = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
           "projection_dim": 1024, "image_size": 224, "patch_size": 14, "hidden_act": "gelu"}  # OpenCLIP ViT-H/14


def random_ip_adapter() -> Path:
    """A plain IP-Adapter for the random SD 1.5 in the original layout, beside its image encoder, built once."""
    import diffusers
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from random_models import bench_dir, random_model

    folder = bench_dir() / "sd15-ip-adapter"
    weights = folder / "ip-adapter_sd15.safetensors"
    if weights.is_file():
        return weights
    torch.manual_seed(2)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**ENCODER)).to(torch.float16)
    encoder.save_pretrained(folder / "image_encoder")
    unet = diffusers.UNet2DConditionModel.from_pretrained(random_model("sd15") / "unet")
    width = unet.config.cross_attention_dim
    tensors = {"image_proj.proj.weight": torch.randn(4 * width, ENCODER["projection_dim"]) * 0.02,
               "image_proj.proj.bias": torch.zeros(4 * width), "image_proj.norm.weight": torch.ones(width),
               "image_proj.norm.bias": torch.zeros(width)}
    number = 1
    for layer, processor in unet.attn_processors.items():
        if layer.endswith("attn2.processor"):
            hidden = next(m for name, m in unet.named_modules() if f"{name}.processor" == layer).to_k.out_features
            tensors[f"ip_adapter.{number}.to_k_ip.weight"] = torch.randn(hidden, width) * 0.02
            tensors[f"ip_adapter.{number}.to_v_ip.weight"] = torch.randn(hidden, width) * 0.02
            number += 2
        del processor
    save_file({key: value.to(torch.float16).contiguous() for key, value in tensors.items()}, str(weights))
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default="plain,image-prompt")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("JOB", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        random_ip_adapter()
        return
    if args.worker:
        print(json.dumps(worker(args.worker[1], args.repeats, args.out)))
        return
    report: dict[str, Any] = {"matmul_peak_gflops": matmul_peaks(), "steps": STEPS, "cfg": CFG, "sampler": SAMPLER,
                              "strength": STRENGTH, "side": SIDE}
    print(json.dumps(report), flush=True)
    build_model("sd15")
    subprocess.run([sys.executable, __file__, "--build"], check=True)  # gigabytes: not in this process
    results, outputs = {}, {}
    for impl in args.impls.split(","):
        if impl != "stock":  # convert for OpenVINO once, outside the measured process
            run_script("cost", impl, 0, Path(tempfile.mkdtemp()) / "x.npy", __file__)
        out = Path(tempfile.mkdtemp()) / f"{impl}.npy"
        results[impl] = run_script("cost", impl, args.repeats, out, __file__)
        outputs[impl] = np.load(out)
        print(json.dumps({impl: results[impl]}), flush=True)
    if "plain" in results and "image-prompt" in results:
        plain, prompted = results["plain"]["e2e_s"], results["image-prompt"]["e2e_s"]
        results["image_prompt_extra"] = round(prompted / plain - 1, 3)
    if "stock" in results and "image-prompt" in results:
        results["ratio_stock_over_ours"] = round(results["stock"]["e2e_s"] / results["image-prompt"]["e2e_s"], 2)
        results["psnr_ours_vs_stock_db"] = psnr(outputs["image-prompt"], outputs["stock"])
    report["cost"] = results
    print(json.dumps(report), flush=True)


def worker(impl: str, repeats: int, out: Path) -> dict[str, Any]:
    from random_models import random_model

    folder, adapter = random_model("sd15"), random_ip_adapter()
    source, reference = demo_photo(SIDE), _reference()
    started = time.perf_counter()
    run, unet, notes = (stock_runner if impl == "stock" else ours_runner)(folder, adapter, source, reference, impl)
    load_s = time.perf_counter() - started
    if repeats == 0:  # only load, and convert what a first run converts (the image-prompt graph)
        if impl == "image-prompt":
            run()
        np.save(out, np.zeros(1))
        return {"load_s": round(load_s, 1)}
    timer = Timer()
    timer.wrap(unet, "forward")
    started = time.perf_counter()
    run()
    first_s = time.perf_counter() - started
    timer.seconds.clear()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        image = run()
        seconds.append(time.perf_counter() - started)
    np.save(out, np.asarray(image.convert("RGB"), dtype=np.uint8))
    return {"e2e_s": round(statistics.median(seconds), 2), "e2e_all_s": [round(s, 2) for s in seconds],
            "first_call_s": round(first_s, 2), "unet_step_s": timer.median(), "notes": notes,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def _reference() -> Any:
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.coffee())


def stock_runner(folder: Path, adapter: Path, source: Any, reference: Any, impl: str) -> tuple[Any, Any, list[str]]:
    """diffusers' img2img pipeline in fp32 with its own IP-Adapter loading, as a user would run it."""
    import diffusers
    import torch
    from transformers import CLIPImageProcessor

    from img2img.engine.samplers import build_scheduler

    pipeline = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(
        folder, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False,
        feature_extractor=CLIPImageProcessor())
    pipeline.load_ip_adapter(str(adapter.parent), subfolder="", weight_name=adapter.name)
    pipeline.scheduler = build_scheduler(SAMPLER, dict(pipeline.scheduler.config), SEED)
    pipeline.set_progress_bar_config(disable=True)

    def run() -> Any:
        return pipeline(prompt=PROMPT, image=source, ip_adapter_image=reference, strength=STRENGTH,
                        guidance_scale=CFG, num_inference_steps=STEPS,
                        generator=torch.Generator().manual_seed(SEED)).images[0]

    return run, pipeline.unet, []


def ours_runner(folder: Path, adapter: Path, source: Any, reference: Any, impl: str) -> tuple[Any, Any, list[str]]:
    from img2img import Engine, GenerationRequest, ImagePrompt

    engine = Engine(device="cpu")  # the defaults: OpenVINO, bf16 where the CPU has it
    loaded = engine.load(str(folder))
    prompts = (ImagePrompt(reference),) if impl == "image-prompt" else ()
    request = GenerationRequest(source=source, prompt=PROMPT, strength=STRENGTH, guidance_scale=CFG, steps=STEPS,
                                sampler=SAMPLER, seed=SEED, model=str(folder), image_prompts=prompts,
                                ip_adapter=str(adapter) if prompts else None)
    notes: list[str] = []

    def run() -> Any:
        result = engine.generate(request)
        notes[:] = result.notes
        return result.images[0]

    return run, loaded.pipeline.unet, notes


if __name__ == "__main__":
    main()
