"""LoRAs on the OpenVINO UNet: their weight deltas added to the converted graph's weights before it compiles.

Why this and not the alternatives, measured on the SD 1.5 UNet (bench/README.md, "LoRA on OpenVINO"):
- Converting the UNet again with the LoRA fused (a cache keyed by model, LoRAs and weights) costs a full trace and
  conversion, about a minute, for every new weight a user tries.
- Feeding the deltas as extra graph inputs would make every step pay for them, and the graph would need to be
  traced with a LoRA's shape in mind.
- Patching is cheap: the graph read from the cached IR already names each weight after its PyTorch parameter
  (``self.unet.<module>.weight``), so a LoRA is W + weight x B @ A on the weights it touches, computed one module
  at a time, and then the usual compilation (as for a new image size). A new combination of LoRAs and weights
  costs one compilation; repeating it costs nothing, and the steps run at OpenVINO's speed.

The factors are read through diffusers (its key conversions for the kohya and diffusers layouts) and scaled as
PEFT scales them (alpha / rank per module, with diffusers' rank and alpha patterns), so the deltas are the ones
``load_lora_weights`` would apply; ``tests/test_loras.py`` checks them against PEFT's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2img.errors import ModelError


@dataclass(frozen=True)
class Factor:
    down: torch.Tensor  # lora_A: (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # lora_B: (out, rank) or (out, rank, 1, 1)
    scale: float  # alpha / rank, as PEFT computes it

    def delta(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The weight delta for a parameter of ``shape`` (PEFT's formulas for linear and 2-D convolution)."""
        down, up = self.down.float(), self.up.float()
        if down.ndim == 2:
            return (up @ down) * self.scale
        if shape[2:4] == (1, 1):
            return (up.flatten(1) @ down.flatten(1)).reshape(shape) * self.scale
        return torch.nn.functional.conv2d(down.transpose(0, 1), up).transpose(0, 1) * self.scale


def unet_factors(pipeline_class: Any, path: Path) -> dict[str, Factor]:
    """A LoRA file's UNet factors, keyed by the UNet parameter they change (``<module>.weight``)."""
    from diffusers.loaders.peft import _create_lora_config
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils.other import get_pattern_key

    state_dict, alphas = pipeline_class.lora_state_dict(str(path))
    unet = {key.removeprefix("unet."): value for key, value in state_dict.items() if key.startswith("unet.")}
    if not unet:
        return {}
    if "lora_A" not in next(iter(unet)):
        unet = convert_unet_state_dict_to_peft(unet)
    if any("lora_magnitude_vector" in key for key in unet):
        raise ModelError(f"{path.name} is a DoRA LoRA, which the OpenVINO backend cannot apply; use --backend torch")
    alphas = {key.removeprefix("unet."): value for key, value in (alphas or {}).items() if key.startswith("unet.")}
    ranks = {f"^{key}": value.shape[1] for key, value in unet.items() if "lora_B" in key and value.ndim > 1}
    config = _create_lora_config(unet, alphas or None, None, ranks)
    factors = {}
    for key in unet:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
        scale = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
        factors[f"{module}.weight"] = Factor(unet[key], unet[f"{module}.lora_B.weight"], scale)
    return factors


def patch(model: Any, loras: list[tuple[dict[str, Factor], float]], prefix: str = "self.unet.") -> None:
    """Add each LoRA's deltas, times its weight, to the weights of ``model`` (an ``ov.Model`` read from IR)."""
    from openvino import opset13

    wanted = {name for factors, _ in loras for name in factors}
    constants = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            for name in op.output(0).get_names():
                if name.removeprefix(prefix) in wanted:
                    constants[name.removeprefix(prefix)] = op
    missing = wanted - set(constants)
    if missing:
        raise ModelError(f"a LoRA changes weights this model does not have ({', '.join(sorted(missing)[:3])})")
    for name, op in constants.items():
        base = op.get_data()
        if base.dtype not in (np.float16, np.float32):
            raise ModelError("LoRAs cannot be added to 8-bit weights (--quantize int8); run without --quantize")
        weights = torch.from_numpy(np.array(base, dtype=np.float32))  # a writable copy of the graph's weights
        for factors, weight in loras:
            if name in factors:
                weights += weight * factors[name].delta(tuple(weights.shape))
        replacement = opset13.constant(weights.numpy().astype(base.dtype))
        replacement.output(0).set_names(op.output(0).get_names())
        for target in op.output(0).get_target_inputs():
            target.replace_source_output(replacement.output(0))
