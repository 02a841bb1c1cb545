"""OpenVINO for step caching (``img2img.engine.step_cache``): the full steps and the shallow ones.

A full step runs the model's own UNet graph (``unet.xml``) with one more output, the features that enter its last
layer: the input of that layer's concatenation with its skip connection, found by the names that tracing gave the
graph's nodes, added when the graph is read, so nothing is converted again for it. The shallow steps run
``unet_shallow.xml``, the UNet's outermost layers with the features as an input, converted on the first request with
``cache_steps`` above 1 (from the float32 PyTorch UNet, once per model and variant, beside its other IR). Both stay
compiled while a run alternates between them; the model's plain UNet graph is dropped meanwhile, so one full copy
of the weights is resident.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from img2img.models import ov_runtime
from img2img.models.ov_graphs import GraphSite, Shape, examples


def feature_channels(config: dict[str, Any]) -> int:
    """Channels of the features that enter the UNet's last layer: what the layer before it puts out."""
    return int(config["block_out_channels"][0])


def with_feature_output(config: dict[str, Any]) -> Callable[[Any], None]:
    """Adds to a UNet graph, as its second output, the features that enter its last layer (the first input of
    the concatenation that feeds the last up block's last resnet)."""
    last_block = len(config["up_block_types"]) - 1
    pattern = re.compile(rf"\.up_blocks\.{last_block}\.resnets\.(\d+)\.")

    def add(model: Any) -> None:
        found: dict[int, Any] = {}
        for op in model.get_ordered_ops():
            if op.get_type_name() != "Concat":
                continue
            users = [target.get_node().get_friendly_name() for output in op.outputs()
                     for target in output.get_target_inputs()]
            layers = {int(match.group(1)) for name in users if (match := pattern.search(name))}
            if layers:
                found[max(layers)] = op
        if not found:
            raise ov_runtime.OpenVinoFailure("the UNet graph has no skip concatenation before its last layer")
        model.add_outputs([found[max(found)].input_value(0)])

    return add


class _ShallowExport(ov_runtime._UNetExport):
    """The UNet's outer ring; the deep features are its last input."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *extra: torch.Tensor) -> Any:
        from img2img.engine.step_cache import shallow

        features, own = extra[-1], extra[:-1]
        options: dict[str, Any] = {}
        if self.xl:
            options["added_cond_kwargs"] = {"text_embeds": own[0], "time_ids": own[1]}
        if self.conditioned:
            options["timestep_cond"] = own[-1]
        return shallow(self.unet, sample, timestep, features, text, **options)


class StepCacheGraphs:
    """The deep and shallow UNet graphs, converted on first need and compiled for their calls."""

    SHALLOW, WHAT = "unet_shallow.xml", "the UNet's outer layers for step caching"

    def __init__(self, site: GraphSite) -> None:
        self.site = site
        self.requests: dict[str, ov_runtime._Request] = {}

    def deep(self, inputs: list[np.ndarray], patch: tuple[Any, Callable[[Any], None] | None]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        output, feature = self._request("deep", patch).outputs(inputs)
        return output, feature

    def shallow(self, inputs: list[np.ndarray], feature: torch.Tensor,
                patch: tuple[Any, Callable[[Any], None] | None]) -> torch.Tensor:
        return self._request("shallow", patch)([*inputs, ov_runtime._array(feature)])

    def drop(self) -> None:
        for request in self.requests.values():
            request.drop()

    def _request(self, part: str, patch: tuple[Any, Callable[[Any], None] | None]) -> ov_runtime._Request:
        if part not in self.requests:
            # First, while no UNet graph is compiled: converting loads the float32 UNet.
            self.site.export(self.SHALLOW, self.WHAT, self._build_shallow)
            self.requests[part] = self.site.request("unet.xml", edit=with_feature_output(self.site.config)) \
                if part == "deep" else self.site.request(self.SHALLOW)
        request = self.requests[part]
        request.set_patch(*patch)
        return request

    def _build_shallow(self, unet: Any, xl: bool, conditioned: bool, own: list[Shape]
                       ) -> tuple[torch.nn.Module, list[Shape], list[torch.Tensor]]:
        feature = (-1, feature_channels(self.site.config), -1, -1)
        return _ShallowExport(unet, xl, conditioned), [*own, feature], examples([*own, feature])
