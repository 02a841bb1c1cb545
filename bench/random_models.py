"""Full-size Stable Diffusion architectures with random weights, saved once as diffusers folders.

Speed does not depend on weight values, so the benchmark builds the real architectures from the configs that
img2img ships (SD 1.5, SD 2.1 for the turbo-class job, SDXL, SD 3 Medium without its T5 encoder) and fills them
with random weights from a fixed seed. The folders are written to ``$IMG2IMG_BENCH_DIR`` (default
``~/.cache/img2img/bench``) in fp16 and reused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

ARCHITECTURES = {"sd15": "sd1", "sd21": "sd2", "sdxl": "sdxl", "sd15-inpainting": "sd1", "sd3": "sd3"}
INPAINTING = ("sd15-inpainting",)  # the same architecture with a 9-channel UNet


def bench_dir() -> Path:
    return Path(os.environ.get("IMG2IMG_BENCH_DIR", Path.home() / ".cache" / "img2img" / "bench"))


def random_model(name: str) -> Path:
    """The folder of the random-weight model ``name`` (sd15, sd21, sdxl, sd15-inpainting, or taesd: the tiny
    autoencoder's architecture), built on first use."""
    target = bench_dir() / name
    if (target / "model_index.json").is_file() or (target / "config.json").is_file():
        return target
    if name == "taesd":
        from diffusers import AutoencoderTiny

        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(target.with_name(".taesd-staging"), safe_serialization=True)
        target.with_name(".taesd-staging").rename(target)
        return target
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from img2img.models.families import Family
    from img2img.models.loading import prepared_config_dir

    base = ARCHITECTURES[name]
    family = Family(base, prediction="flow" if base == "sd3" else "epsilon", inpainting=name in INPAINTING)  # type: ignore[arg-type]
    configs = prepared_config_dir(family)
    staging = target.with_name(f".{name}-staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(configs, staging)
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection if base == "sd3" else CLIPTextModel
    components = {
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae")),
        "text_encoder": text_encoder(CLIPTextConfig.from_pretrained(configs / "text_encoder")),
    }
    if base == "sd3":  # the MMDiT; the model runs without T5, whose tokenizer cannot be shipped
        components["transformer"] = SD3Transformer2DModel.from_config(
            SD3Transformer2DModel.load_config(configs / "transformer"))
    else:
        components["unet"] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
    if (configs / "text_encoder_2").is_dir():
        components["text_encoder_2"] = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(configs / "text_encoder_2"))
    for folder, module in components.items():
        module.to(torch.float16).save_pretrained(staging / folder, safe_serialization=True)
        del module
    staging.rename(target)
    return target


if __name__ == "__main__":
    import sys

    print(random_model(sys.argv[1]))
