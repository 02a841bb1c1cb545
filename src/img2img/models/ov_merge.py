"""OpenVINO for token merging (``img2img.engine.token_merge``): a UNet graph that merges tokens itself.

``unet_merge-v2.xml`` is the model's UNet traced with token merging's attention at its first level with
self-attention, the ratio its last input (parts per ``RATIO_PARTS``, int64); ``unet_merge-v2-levels2.xml`` merges
at two levels, and so on. The merge is written in tensor operations, so one graph serves every size and ratio; each
is converted on the first request that merges at its levels (from the float32 PyTorch UNet, once per model and
variant, beside its other IR) and compiled while a run merges, in place of the model's plain UNet graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from img2img.models import ov_runtime
from img2img.models.ov_graphs import GraphSite, Shape, UNetGraph, examples

MERGE_VERSION = "2"  # 2: the sources sorted on unique keys (OpenVINO's stable sort took quadratic time)


class _MergingExport(ov_runtime._UNetExport):
    """The UNet merging tokens at ``levels`` levels; the ratio's parts per ``RATIO_PARTS`` are its last input."""

    def __init__(self, unet: Any, xl: bool, conditioned: bool, levels: int) -> None:
        super().__init__(unet, xl, conditioned)
        self.levels = levels

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *extra: torch.Tensor) -> Any:
        from img2img.engine.token_merge import merging_tokens

        with merging_tokens(self.unet, extra[-1], self.levels):
            return super().forward(sample, timestep, text, *extra[:-1])


def ratio_input(ratio: float) -> np.ndarray:
    """The graph's last input for a share of merged tokens."""
    from img2img.engine.token_merge import RATIO_PARTS

    return np.asarray(round(ratio * RATIO_PARTS), dtype=np.int64)


class MergeGraph(UNetGraph):
    """The UNet graph that merges tokens at ``levels`` levels."""

    NAME, WHAT = f"unet_merge-v{MERGE_VERSION}.xml", "the UNet that merges tokens"

    def __init__(self, site: GraphSite, levels: int = 1) -> None:
        super().__init__(site)
        self.levels = levels
        if levels > 1:
            self.name = self.NAME.replace(".xml", f"-levels{levels}.xml")

    def run(self, inputs: list[np.ndarray], ratio: float, patch: tuple[Any, Callable[[Any], None] | None]
            ) -> torch.Tensor:
        return self._compiled(patch)([*inputs, ratio_input(ratio)])

    def _export(self) -> None:
        super()._export()
        for stale in self.site.folder.glob("unet_merge*.*"):  # an earlier version's graphs (1.7 GB for SD 1.5)
            if stale.stem.split("-levels")[0] != self.NAME.removesuffix(".xml"):  # this version's: any levels
                stale.unlink(missing_ok=True)

    def _build(self, unet: Any, xl: bool, conditioned: bool, own: list[Shape]
               ) -> tuple[torch.nn.Module, list[Shape], list[torch.Tensor]]:
        export = _MergingExport(unet, xl, conditioned, self.levels)
        return export, [*own, ()], [*examples(own), torch.from_numpy(ratio_input(0.5))]
