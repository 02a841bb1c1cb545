"""FLOPs of one job's parts, counted by ``torch.utils.flop_counter`` on the meta device (shapes only, instant).

    .venv/bin/python bench/flops.py sd15

Prints {"unet_tflop": ..., "vae_encode_tflop": ..., "vae_decode_tflop": ...}: one UNet evaluation at the job's
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
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    sys.path.insert(0, str(Path(__file__).parent))
    from cpu_speed import JOBS
    from img2img.models.families import Family
    from img2img.models.loading import prepared_config_dir
    from random_models import ARCHITECTURES

    spec = JOBS[job]
    configs = prepared_config_dir(Family(ARCHITECTURES[spec["model"]]))  # type: ignore[arg-type]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
    unet.set_attn_processor(AttnProcessor())  # explicit matmuls: every attention FLOP is visible to the counter
    vae.set_attn_processor(AttnProcessor())
    batch = 2 if spec["cfg"] > 1 else 1
    side, latent_side = spec["side"], spec["side"] // 8
    text_width = unet.config.cross_attention_dim
    unet_inputs = {
        "sample": torch.empty(batch, 4, latent_side, latent_side, device="meta"),
        "timestep": torch.tensor(500, device="meta"),
        "encoder_hidden_states": torch.empty(batch, 77, text_width, device="meta"),
    }
    if unet.config.addition_embed_type == "text_time":  # SDXL's pooled text and size conditioning
        unet_inputs["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, 1280, device="meta"),
                                            "time_ids": torch.empty(batch, 6, device="meta")}
    figures = {}
    with torch.no_grad():
        for name, call in (("unet", lambda: unet(**unet_inputs)),
                           ("vae_encode", lambda: vae.encode(torch.empty(1, 3, side, side, device="meta"))),
                           ("vae_decode", lambda: vae.decode(torch.empty(1, 4, latent_side, latent_side,
                                                                         device="meta")))):
            with FlopCounterMode(display=False) as counter:
                call()
            figures[f"{name}_tflop"] = round(counter.get_total_flops() / 1e12, 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main(sys.argv[1])
