"""Tiny random-weight ControlNets and T2I-Adapters for the tiny models, built in code, in the layouts people have."""

from __future__ import annotations

from pathlib import Path

import torch

from ldm_layout import unet_key

STANDARD_HINT = (16, 32, 96, 256)  # the hint encoder's widths in every ControlNet 1.x file


def build_tiny_controlnet(model: Path, folder: Path, hint: tuple[int, ...] = (16, 32), seed: int = 1) -> Path:
    """A ControlNet made from ``model``'s UNet (as diffusers' from_unet does), saved as a diffusers folder; its
    zero-initialised layers (the hint encoder's output, the residual outputs) get random weights so that it acts
    and reads the map."""
    import diffusers

    unet = diffusers.UNet2DConditionModel.from_pretrained(model / "unet")
    torch.manual_seed(seed)
    net = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=hint)
    with torch.no_grad():
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            block.weight.normal_(0, 0.3)
    net.save_pretrained(folder)
    return folder


def build_tiny_adapter(folder: Path, xl: bool = False, in_channels: int = 3, seed: int = 2) -> Path:
    """A T2I-Adapter whose features fit the tiny UNets (widths 32 and 64, the VAE halving the size)."""
    import diffusers

    torch.manual_seed(seed)
    adapter = diffusers.T2IAdapter(in_channels=in_channels, channels=[32, 64], num_res_blocks=2,
                                   downscale_factor=2, adapter_type="full_adapter_xl" if xl else "full_adapter")
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.mul_(4)  # random features strong enough to change the tiny model's picture clearly
    adapter.save_pretrained(folder)
    return folder


def original_layout(folder: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ControlNet at ``folder`` in the original single-file key layout (ControlNet 1.1's files; ``prefix``
    "control_model." as in ControlNet 1.0's). It needs the standard hint encoder widths."""
    import diffusers

    net = diffusers.ControlNetModel.from_pretrained(folder)
    config = dict(net.config) | {"up_block_types": ()}
    assert tuple(config["conditioning_embedding_out_channels"]) == STANDARD_HINT
    out = {}
    for key, value in net.state_dict().items():
        if key.startswith("controlnet_down_blocks."):
            index, rest = key.split(".", 2)[1:]
            name = f"zero_convs.{index}.0.{rest}"
        elif key.startswith("controlnet_mid_block."):
            name = "middle_block_out.0." + key.rsplit(".", 1)[1]
        elif key.startswith("controlnet_cond_embedding.conv_in."):
            name = "input_hint_block.0." + key.rsplit(".", 1)[1]
        elif key.startswith("controlnet_cond_embedding.conv_out."):
            name = "input_hint_block.14." + key.rsplit(".", 1)[1]
        elif key.startswith("controlnet_cond_embedding.blocks."):
            index, rest = key.split(".", 3)[2:]
            name = f"input_hint_block.{2 * int(index) + 2}.{rest}"
        else:
            name = unet_key(key, config)
        out[prefix + name] = value.contiguous()
    return out


def build_tiny_depth(folder: Path) -> Path:
    """A tiny random Depth Anything (a four-layer DINOv2 backbone) with its image processor, as a transformers
    folder, as the real ones are saved."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(image_size=56, patch_size=14, num_hidden_layers=4, hidden_size=32, num_attention_heads=2,
                            intermediate_size=64, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, patch_size=14,
                                 neck_hidden_sizes=[16, 32, 32, 32], fusion_hidden_size=16, head_hidden_size=8)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3).save_pretrained(folder)
    return folder
