"""The cache of model parts (ControlNets here): loaded once per weights and placement, shared, evicted oldest first."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from img2img.models.device import choose_placement
from img2img.models.parts import PartCache


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 1.x ControlNet, as diffusers saves one."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    folder = tmp_path_factory.mktemp("parts") / "tiny-controlnet"
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).save_pretrained(folder)
    return folder


class CountingLoader:
    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, path: Path, placement: Any) -> Any:
        from diffusers import ControlNetModel

        self.calls.append(path)
        return ControlNetModel.from_pretrained(path, torch_dtype=placement.dtype)


def test_the_same_weights_load_once_wherever_they_lie(controlnet: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(controlnet, tmp_path / "elsewhere")
    cache, load = PartCache(), CountingLoader()
    placement = choose_placement("cpu", "float32", "torch")
    first = cache.get("controlnet", controlnet, placement, load)
    again = cache.get("controlnet", copy, placement, load)
    assert again is first and load.calls == [controlnet]
    assert not first.training and not any(parameter.requires_grad for parameter in first.parameters())

    in_bf16 = cache.get("controlnet", controlnet, choose_placement("cpu", "bfloat16", "torch"), load)
    assert in_bf16 is not first and next(in_bf16.parameters()).dtype == torch.bfloat16
    assert [key.dtype for key in cache.loaded()] == ["float32", "bfloat16"]


def test_other_weights_are_another_part_and_the_oldest_goes_first(controlnet: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    other = shutil.copytree(controlnet, tmp_path / "other")
    weights = next(other.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(iter(tensors))
    save_file({**tensors, name: tensors[name] + 1}, weights)

    cache, load = PartCache(capacity=1), CountingLoader()
    placement = choose_placement("cpu", "float32", "torch")
    first = cache.get("controlnet", controlnet, placement, load)
    second = cache.get("controlnet", other, placement, load)
    assert second is not first and len(cache.loaded()) == 1
    cache.get("controlnet", controlnet, placement, load)  # evicted, so loaded again
    assert load.calls == [controlnet, other, controlnet]
