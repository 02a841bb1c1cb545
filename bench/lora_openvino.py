"""What a LoRA costs on the OpenVINO backend: the first image with a new LoRA or weight, a repeat, and the way back.

Runs the full SD 1.5 architecture with random weights (bench/random_models.py) and a random rank-32 LoRA in the
kohya layout on every linear layer of the UNet's transformer blocks and of the text encoder, in one process with a
fresh cache folder, so that the conversion that the alternative design would pay for every new weight is timed in
the same run. Prints one JSON object.

    python bench/lora_openvino.py [--side 512] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from random_models import random_model

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "q_proj",
           "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def build_lora(model: Path, path: Path, rank: int = 32) -> Path:
    """A random kohya-layout LoRA for every linear layer of the UNet's transformer blocks and the text encoder."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for prefix, module in (("lora_unet", UNet2DConditionModel.from_pretrained(model / "unet")),
                           ("lora_te", CLIPTextModel.from_pretrained(model / "text_encoder"))):
        for name, layer in module.named_modules():
            in_block = prefix == "lora_te" or "attentions" in name
            if isinstance(layer, torch.nn.Linear) and in_block and name.endswith(TARGETS):
                path_name = name if prefix == "lora_unet" or name.startswith("text_model.") else f"text_model.{name}"
                key = f"{prefix}_{path_name.replace('.', '_')}"
                tensors[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator) * 0.01
                tensors[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.01
                tensors[f"{key}.alpha"] = torch.tensor(rank / 2)
        del module
    save_file({key: value.to(torch.float16) for key, value in tensors.items()}, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    model = random_model("sd15")
    work = Path(tempfile.mkdtemp(prefix="img2img-lora-bench-"))
    os.environ["IMG2IMG_CACHE_DIR"] = str(work / "cache")  # a fresh cache: the first load converts
    os.environ["IMG2IMG_LORA_DIR"] = str(work)
    lora = build_lora(model, work / "bench_lora.safetensors")
    from PIL import Image

    from img2img import Engine, GenerationRequest

    engine = Engine(device="cpu", backend="openvino")
    started = time.perf_counter()
    engine.load(str(model))
    conversion_s = time.perf_counter() - started
    source = Image.new("RGB", (args.side, args.side), (120, 140, 160))

    def job(prompt: str) -> float:
        request = GenerationRequest(source=source, prompt=prompt, model=str(model), strength=1.0, steps=args.steps,
                                    seed=1, guidance_scale=7.0)
        began = time.perf_counter()
        engine.generate(request)
        return round(time.perf_counter() - began, 2)

    base_first = job("a lighthouse at dusk")  # compiles the base graph for this size
    runs = {"base": job("a lighthouse at dusk"), "lora_first": job("a lighthouse at dusk <lora:bench_lora:0.8>"),
            "lora_repeat": job("a lighthouse at dusk <lora:bench_lora:0.8>"),
            "lora_new_weight": job("a lighthouse at dusk <lora:bench_lora:0.5>"),
            "base_again": job("a lighthouse at dusk"), "base_repeat": job("a lighthouse at dusk")}
    report = {
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "side": args.side, "steps": args.steps, "lora_mb": round(lora.stat().st_size / 2**20, 1),
        "conversion_s": round(conversion_s, 1), "base_first_s": base_first, **{f"{k}_s": v for k, v in runs.items()},
        "lora_switch_cost_s": round(runs["lora_first"] - runs["lora_repeat"], 2),
        "lora_step_overhead": round(runs["lora_repeat"] / runs["base"], 3),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
