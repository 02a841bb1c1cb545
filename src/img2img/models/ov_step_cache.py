"""OpenVINO for step caching (``img2img.engine.step_cache``): the UNet as two graphs of its own.

``unet_deep.xml`` is the whole UNet with a second output, the features that enter its last layer;
``unet_shallow.xml`` is its outer ring, which takes those features as an input. Both are converted on the first
request with ``cache_steps`` above 1 (from the float32 PyTorch UNet, once per model and variant, beside its other
IR) and stay compiled together while the run alternates between them; the model's own UNet graph is dropped
meanwhile, so one full copy of the weights is resident.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2img.models import ov_runtime


def feature_channels(config: dict[str, Any]) -> int:
    """Channels of the features that enter the UNet's last layer: what the layer before it puts out."""
    return int(config["block_out_channels"][0])


class _DeepExport(ov_runtime._UNetExport):
    """The UNet, returning its prediction and the features that enter its last layer."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *extra: torch.Tensor) -> Any:
        from img2img.engine.step_cache import deep

        return deep(self.unet, sample, timestep, encoder_hidden_states=text, **self._options(extra))

    def _options(self, extra: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.xl:
            options["added_cond_kwargs"] = {"text_embeds": extra[0], "time_ids": extra[1]}
        if self.conditioned:
            options["timestep_cond"] = extra[-1]
        return options


class _ShallowExport(_DeepExport):
    """The UNet's outer ring; the deep features are its last input."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *extra: torch.Tensor) -> Any:
        from img2img.engine.step_cache import shallow

        return shallow(self.unet, sample, timestep, extra[-1], text, **self._options(extra[:-1]))


class StepCacheGraphs:
    """The deep and shallow UNet graphs, converted on first need and compiled for their calls."""

    def __init__(self, core: Any, folder: Path, options: dict[str, str], turn: Any, variant: str,
                 float_unet: Callable[[], torch.nn.Module], config: dict[str, Any]) -> None:
        self._core, self._folder, self._options, self._turn = core, folder, options, turn
        self._variant, self._float_unet, self._config = variant, float_unet, config
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
            self._export()
            self.requests[part] = ov_runtime._Request(self._core, self._folder / f"unet_{part}.xml", self._options,
                                                      self._turn)
        request = self.requests[part]
        request.set_patch(*patch)
        return request

    def _export(self) -> None:
        from img2img.models.ov_control import _convert, _save

        xmls = {part: self._folder / f"unet_{part}.xml" for part in ("deep", "shallow")}
        if all(xml.is_file() for xml in xmls.values()):
            return
        try:
            unet = self._float_unet()
            xl = self._config.get("addition_embed_type") == "text_time"
            conditioned = self._config.get("time_cond_proj_dim") is not None
            own = ov_runtime.unet_input_shapes(unet)
            example = [torch.zeros(ov_runtime._example_shape(shape, 1)) for shape in own]
            feature_shape = (-1, feature_channels(self._config), -1, -1)
            feature = torch.zeros(ov_runtime._example_shape(feature_shape, 1))
            for part, module, shapes, inputs in (
                ("deep", _DeepExport(unet, xl, conditioned), own, example),
                ("shallow", _ShallowExport(unet, xl, conditioned), [*own, feature_shape], [*example, feature]),
            ):
                if not xmls[part].is_file():
                    _save(_convert(module, shapes, inputs), xmls[part], self._variant,
                          self._variant.endswith("-int8"))
            del unet
        except (RuntimeError, ValueError, TypeError, OSError) as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ov_runtime.OpenVinoFailure(f"the UNet for step caching could not be converted: "
                                             f"{detail[:160]}") from exc
