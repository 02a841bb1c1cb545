"""Tiny random-weight IP-Adapters for the tiny models, built in code: a CLIP image encoder folder and an adapter
file in the original key layout (``image_proj.*``, ``ip_adapter.N.to_k_ip/to_v_ip.weight``), as the IP-Adapter
repositories ship them."""

from __future__ import annotations

from pathlib import Path

import torch

ENCODER_SIDE = 32  # the tiny encoder's input side; real ones read 224


def build_tiny_image_encoder(folder: Path, hidden: int = 32, projection: int = 24, seed: int = 3) -> Path:
    """A CLIPVisionModelWithProjection with 2 layers, saved as transformers saves it (an ``image_encoder/``)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden, projection_dim=projection, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=37, image_size=ENCODER_SIDE, patch_size=4)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return folder


def build_tiny_ip_adapter(model: Path, folder: Path, plus: bool = False, seed: int = 4,
                          name: str | None = None) -> Path:
    """An IP-Adapter for the tiny model at ``model`` (its UNet's cross-attention layers and width) in ``folder``,
    beside an ``image_encoder/``: the plain variant (4 tokens from the encoder's projected embedding) or "plus"
    (8 tokens from a 4-layer resampler over the encoder's penultimate hidden states). Returns the weight file."""
    import diffusers
    from safetensors.torch import save_file

    unet = diffusers.UNet2DConditionModel.from_pretrained(model / "unet")
    width = int(unet.config.cross_attention_dim)
    encoder = build_tiny_image_encoder(folder / "image_encoder")
    from transformers import CLIPVisionConfig

    vision = CLIPVisionConfig.from_pretrained(encoder)
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    tensors = _resampler(vision.hidden_size, width, rand) if plus else {
        "image_proj.proj.weight": rand(4 * width, vision.projection_dim),
        "image_proj.proj.bias": rand(4 * width),
        "image_proj.norm.weight": 1 + rand(width, scale=0.1), "image_proj.norm.bias": rand(width, scale=0.1)}
    number = 1  # the original numbering counts every attention layer: the cross-attention ones are odd
    for layer in unet.attn_processors:
        if layer.endswith("attn2.processor"):
            hidden = _hidden_size(layer, unet.config.block_out_channels)
            tensors[f"ip_adapter.{number}.to_k_ip.weight"] = rand(hidden, width)
            tensors[f"ip_adapter.{number}.to_v_ip.weight"] = rand(hidden, width)
            number += 2
    path = folder / (name or ("ip-adapter-plus_tiny.safetensors" if plus else "ip-adapter_tiny.safetensors"))
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path


def _hidden_size(layer: str, widths: tuple[int, ...]) -> int:
    if layer.startswith("mid_block"):
        return int(widths[-1])
    block = int(layer.split(".")[1])
    return int(widths[block] if layer.startswith("down_blocks") else list(reversed(widths))[block])


def _resampler(embed: int, output: int, rand) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The "plus" projection in the original layout: a perceiver resampler of 4 layers (one head of 64)."""
    hidden, queries = 64, 8
    tensors = {"image_proj.latents": rand(1, queries, hidden), "image_proj.proj_in.weight": rand(hidden, embed),
               "image_proj.proj_in.bias": rand(hidden), "image_proj.proj_out.weight": rand(output, hidden),
               "image_proj.proj_out.bias": rand(output), "image_proj.norm_out.weight": 1 + rand(output, scale=0.1),
               "image_proj.norm_out.bias": rand(output, scale=0.1)}
    for index in range(4):
        layer = f"image_proj.layers.{index}"
        for norm in ("norm1", "norm2"):
            tensors[f"{layer}.0.{norm}.weight"] = 1 + rand(hidden, scale=0.1)
            tensors[f"{layer}.0.{norm}.bias"] = rand(hidden, scale=0.1)
        tensors |= {f"{layer}.0.to_q.weight": rand(64, hidden), f"{layer}.0.to_kv.weight": rand(128, hidden),
                    f"{layer}.0.to_out.weight": rand(hidden, 64), f"{layer}.1.0.weight": 1 + rand(hidden, scale=0.1),
                    f"{layer}.1.0.bias": rand(hidden, scale=0.1), f"{layer}.1.1.weight": rand(4 * hidden, hidden),
                    f"{layer}.1.3.weight": rand(hidden, 4 * hidden)}
    return tensors
