"""FLOPs of one job's parts, counted by ``torch.utils.flop_counter`` on the meta device (shapes only, instant).

    .venv/bin/python bench/flops.py sd15

Prints {"unet_tflop": ..., "vae_encode_tflop": ..., "vae_decode_tflop": ...}: one UNet (SD 3: transformer)
evaluation at the job's
batch (2 with classifier-free guidance, else 1), one VAE encode and one decode at the job's size. On the meta
device attention runs as plain matrix multiplies, so it is counted in full (the CPU flash-attention kernel is not
in the counter's table and would be missed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def main(job: str) -> None:
    from diffusers import AutoencoderKL
    from diffusers.models.attention_processor import AttnProcessor

    sys.path.insert(0, str(Path(__file__).parent))
    from cpu_speed import JOBS
    from img2img.models.families import Family
    from img2img.models.loading import prepared_config_dir
    from random_models import ARCHITECTURES

    spec = JOBS[job]
    base = ARCHITECTURES[spec["model"]]
    configs = prepared_config_dir(Family(base, prediction="flow" if base == "sd3" else "epsilon"))  # type: ignore[arg-type]
    batch = 2 if spec["cfg"] > 1 else 1
    side, latent_side = spec["side"], spec["side"] // 8
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
        unet, unet_inputs = _sd3_inputs(configs, batch, latent_side) if base == "sd3" else _unet_inputs(
            configs, batch, latent_side)
    vae.set_attn_processor(AttnProcessor())
    channels = vae.config.latent_channels
    figures = {}
    with torch.no_grad():
        for name, call in (("unet", lambda: unet(**unet_inputs)),
                           ("vae_encode", lambda: vae.encode(torch.empty(1, 3, side, side, device="meta"))),
                           ("vae_decode", lambda: vae.decode(torch.empty(1, channels, latent_side, latent_side,
                                                                         device="meta")))):
            with FlopCounterMode(display=False) as counter:
                call()
            figures[f"{name}_tflop"] = round(counter.get_total_flops() / 1e12, 3)
    print(json.dumps(figures))


def _unet_inputs(configs: Path, batch: int, latent_side: int) -> tuple[torch.nn.Module, dict[str, object]]:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
    unet.set_attn_processor(AttnProcessor())  # explicit matmuls: every attention FLOP is visible to the counter
    inputs: dict[str, object] = {
        "sample": torch.empty(batch, 4, latent_side, latent_side),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.empty(batch, 77, unet.config.cross_attention_dim),
    }
    if unet.config.addition_embed_type == "text_time":  # SDXL's pooled text and size conditioning
        inputs["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, 1280), "time_ids": torch.empty(batch, 6)}
    return unet, inputs


def _sd3_inputs(configs: Path, batch: int, latent_side: int) -> tuple[torch.nn.Module, dict[str, object]]:
    """SD 3's transformer with its text sequence: 77 CLIP tokens and T5's 256 (zeros without T5: the same work).
    Its joint attention stays scaled_dot_product_attention, whose FLOPs the counter knows on the meta device."""
    from diffusers import SD3Transformer2DModel

    transformer = SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(configs / "transformer"))
    config = transformer.config
    return transformer, {
        "hidden_states": torch.empty(batch, 16, latent_side, latent_side), "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.empty(batch, 77 + 256, config.joint_attention_dim),
        "pooled_projections": torch.empty(batch, config.pooled_projection_dim), "return_dict": False}


if __name__ == "__main__":
    main(sys.argv[1])
