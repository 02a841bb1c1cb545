"""OpenVINO for token merging (``img2img.engine.token_merge``): a UNet graph that merges tokens itself.

``unet_merge.xml`` is the model's UNet traced with token merging's attention at its first level with
self-attention, the ratio its last input (parts per ``RATIO_PARTS``, int64). The merge is written in tensor
operations, so one graph serves every size and ratio; it is converted on the first request with ``merge_tokens``
above 0 (from the float32 PyTorch UNet, once per model and variant, beside its other IR) and compiled while a run
merges, in place of the model's plain UNet graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2img.models import ov_runtime


class _MergingExport(ov_runtime._UNetExport):
    """The UNet merging tokens; the ratio's parts per ``RATIO_PARTS`` are its last input."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *extra: torch.Tensor) -> Any:
        from img2img.engine.token_merge import merging_tokens

        with merging_tokens(self.unet, extra[-1]):
            return super().forward(sample, timestep, text, *extra[:-1])


def ratio_input(ratio: float) -> np.ndarray:
    """The graph's last input for a share of merged tokens."""
    from img2img.engine.token_merge import RATIO_PARTS

    return np.asarray(round(ratio * RATIO_PARTS), dtype=np.int64)


class MergeGraph:
    """The UNet graph that merges tokens, converted on first need and compiled for its calls."""

    def __init__(self, core: Any, folder: Path, options: dict[str, str], turn: Any, variant: str,
                 float_unet: Callable[[], torch.nn.Module], config: dict[str, Any]) -> None:
        self._core, self._xml, self._options, self._turn = core, folder / "unet_merge.xml", options, turn
        self._variant, self._float_unet, self._config = variant, float_unet, config
        self.request: ov_runtime._Request | None = None

    def run(self, inputs: list[np.ndarray], ratio: float, patch: tuple[Any, Callable[[Any], None] | None]
            ) -> torch.Tensor:
        if self.request is None:
            self._export()
            self.request = ov_runtime._Request(self._core, self._xml, self._options, self._turn)
        self.request.set_patch(*patch)
        return self.request([*inputs, ratio_input(ratio)])

    def _export(self) -> None:
        from img2img.models.ov_control import _convert, _save

        if self._xml.is_file():
            return
        try:
            unet = self._float_unet()
            xl, conditioned = ov_runtime.unet_extras(self._config)
            own = ov_runtime.unet_input_shapes(unet)
            example = [torch.zeros(ov_runtime._example_shape(shape, 1)) for shape in own]
            model = _convert(_MergingExport(unet, xl, conditioned), [*own, ()],
                             [*example, torch.from_numpy(ratio_input(0.5))])
            del unet
            _save(model, self._xml, self._variant, self._variant.endswith("-int8"))
        except (RuntimeError, ValueError, TypeError, OSError) as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ov_runtime.OpenVinoFailure(f"the UNet that merges tokens could not be converted: "
                                             f"{detail[:160]}") from exc
