"""OpenVINO for ControlNets: the ControlNet itself as IR, and a second UNet graph that takes its residuals.

The model's own UNet graph takes the prompt's inputs only. The first request with a ControlNet converts a copy of
the UNet that also takes the twelve down-block residuals and the mid-block one (``unet_control.xml``, beside the
model's other IR, from the float32 PyTorch UNet, once), and each ControlNet is converted once per its weights, the
UNet config it is used with and the variant. Only one of the two UNet graphs is compiled at a time.

A ControlNet's graph is traced at conditioning scale 1 without guess mode; the stand-in applies the scale, guess
mode's logarithmic ramp and nothing else in PyTorch, exactly as diffusers' ``ControlNetModel.forward`` ends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2img.models import ov_runtime
from img2img.models.control_models import residual_shapes
from img2img.models.ov_graphs import Shape, UNetGraph, convert, examples, save
from img2img.models.paths import cache_dir

CONTROL_IR_VERSION = "1"


def _example_residuals(config: dict[str, Any]) -> list[torch.Tensor]:
    """Residuals for tracing at the odd example latent side (``ov_runtime._example_shape``)."""
    side = ov_runtime.EXAMPLE_LATENT_SIDE
    return [torch.zeros(shape) for shape in residual_shapes(config, 2, side, side)]


class _ControlledUNetExport(ov_runtime._UNetExport):
    """The UNet with the ControlNet residuals as its last inputs (down ones, then mid)."""

    def __init__(self, unet: Any, xl: bool, conditioned: bool, residuals: int) -> None:
        super().__init__(unet, xl, conditioned)
        self.residuals = residuals

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *extra: torch.Tensor) -> Any:
        own, residuals = extra[:-self.residuals], extra[-self.residuals:]
        options: dict[str, Any] = {"down_block_additional_residuals": list(residuals[:-1]),
                                   "mid_block_additional_residual": residuals[-1]}
        if self.xl:
            options["added_cond_kwargs"] = {"text_embeds": own[0], "time_ids": own[1]}
        if self.conditioned:
            options["timestep_cond"] = own[-1]
        return self.unet(sample, timestep, encoder_hidden_states=text, return_dict=False, **options)[0]


class ControlGraph(UNetGraph):
    """The UNet graph that takes ControlNet residuals."""

    NAME, WHAT = "unet_control.xml", "the UNet with ControlNet inputs"

    def run(self, inputs: list[np.ndarray], down: list[torch.Tensor], mid: torch.Tensor,
            patch: tuple[Any, Callable[[Any], None] | None]) -> torch.Tensor:
        arrays = [*(ov_runtime._array(r) for r in down), ov_runtime._array(mid)]
        return self._compiled(patch)([*inputs, *arrays])

    def _build(self, unet: Any, xl: bool, conditioned: bool, own: list[Shape]
               ) -> tuple[torch.nn.Module, list[Shape], list[torch.Tensor]]:
        residuals = residual_shapes(self.site.config, -1, -1, -1)
        shapes = [*own, *[(-1, shape[1], -1, -1) for shape in residuals]]
        example = examples(own) + _example_residuals(self.site.config)
        return _ControlledUNetExport(unet, xl, conditioned, len(residuals)), shapes, example


def controlnet_folder(sha256: str, unet_digest: str, variant: str) -> Path:
    return cache_dir() / "openvino" / "controlnets" / f"{sha256[:24]}-{unet_digest}-{variant}-v{CONTROL_IR_VERSION}"


def load_controlnet(folder: Path, variant: str, load_float: Callable[[], Any], load_torch: Callable[[], Any],
                    pixels_per_latent: int) -> OpenVinoControlNet:
    """The ControlNet's stand-in, converting it into ``folder`` first when it is not there (from ``load_float``,
    its float32 PyTorch module); ``load_torch`` gives the PyTorch module for what OpenVINO cannot run. A
    ControlNet that does not convert runs with PyTorch, with a note."""
    import openvino as ov

    xml = folder / "controlnet.xml"
    try:
        if not xml.is_file():
            _export_controlnet(xml, variant, load_float, pixels_per_latent)
        config = json.loads((folder / "config.json").read_text())
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        net = load_torch()
        stand_in = OpenVinoControlNet(None, dict(net.config), load_torch)
        stand_in.take_over(net, f"it could not be converted: {(str(exc).strip().splitlines() or [''])[0][:160]}")
        return stand_in
    options = {"INFERENCE_PRECISION_HINT": variant.split("-")[0], "PERFORMANCE_HINT": "LATENCY"}
    request = ov_runtime._Request(ov.Core(), xml, options, ov_runtime._Turn())
    return OpenVinoControlNet(request, config, load_torch)


def _export_controlnet(xml: Path, variant: str, load_float: Callable[[], Any], pixels_per_latent: int) -> None:
    net = load_float()
    config = dict(net.config)
    xml.parent.mkdir(parents=True, exist_ok=True)
    shapes = [(-1, config["in_channels"], -1, -1), (), (-1, ov_runtime.TOKENS, config["cross_attention_dim"]),
              (-1, config["conditioning_channels"], -1, -1)]
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        shapes += [(-1, pooled), (-1, 6)]
    example = [torch.zeros(ov_runtime._example_shape(shape, pixels_per_latent if index == 3 else 1))
               for index, shape in enumerate(shapes)]
    model = convert(_ControlNetExport(net, len(shapes) > 4), shapes, example)
    del net
    (xml.parent / "config.json").write_text(json.dumps(config, default=list))
    save(model, xml, variant, int8=False)


class _ControlNetExport(torch.nn.Module):
    def __init__(self, net: Any, xl: bool) -> None:
        super().__init__()
        self.net, self.xl = net, xl

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, cond: torch.Tensor,
                *extra: torch.Tensor) -> Any:
        options = {"added_cond_kwargs": {"text_embeds": extra[0], "time_ids": extra[1]}} if self.xl else {}
        down, mid = self.net(sample, timestep, encoder_hidden_states=text, controlnet_cond=cond,
                             conditioning_scale=1.0, return_dict=False, **options)
        return (*down, mid)


class OpenVinoControlNet:
    """Called like a diffusers ControlNetModel (the arguments the control conditioner passes)."""

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, request: ov_runtime._Request | None, config: dict[str, Any], load_torch: Callable[[], Any]
                 ) -> None:
        self.config = ov_runtime._Config(config)
        self._request, self._load_torch = request, load_torch
        self._torch: Any = None
        self.notes: list[str] = []

    def take_over(self, module: Any, why: str) -> None:
        """Run with the PyTorch ``module`` from now on, saying ``why`` once."""
        self._torch = module
        self.notes.append(f"OpenVINO could not run the ControlNet ({why}); it runs with PyTorch instead")

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.forward(*args, **kwargs)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                controlnet_cond: torch.Tensor, conditioning_scale: float = 1.0, guess_mode: bool = False,
                return_dict: bool = False, added_cond_kwargs: dict[str, torch.Tensor] | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self._torch is not None:
            return self._in_torch(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                                  guess_mode, added_cond_kwargs)
        inputs = [ov_runtime._array(sample), np.asarray(float(timestep), dtype=np.float32),
                  ov_runtime._array(encoder_hidden_states), ov_runtime._array(controlnet_cond)]
        if added_cond_kwargs:
            inputs += [ov_runtime._array(added_cond_kwargs["text_embeds"]),
                       ov_runtime._array(added_cond_kwargs["time_ids"])]
        try:
            assert self._request is not None  # without one, the PyTorch module took over when it was made
            *down, mid = self._request.outputs(inputs)
        except ov_runtime.OpenVinoFailure as failure:
            self.take_over(self._load_torch(), str(failure))
            return self(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, guess_mode,
                        return_dict, added_cond_kwargs)
        if guess_mode and not self.config.get("global_pool_conditions"):  # 0.1 to 1, shallow to deep
            scales = torch.logspace(-1, 0, len(down) + 1) * conditioning_scale
            return [d * s for d, s in zip(down, scales, strict=False)], mid * scales[-1]
        return [d * conditioning_scale for d in down], mid * conditioning_scale

    def _in_torch(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, cond: torch.Tensor,
                  scale: float, guess_mode: bool, added: dict[str, torch.Tensor] | None
                  ) -> tuple[list[torch.Tensor], torch.Tensor]:
        dtype = next(self._torch.parameters()).dtype
        extra = {"added_cond_kwargs": {k: v.to(dtype) for k, v in added.items()}} if added else {}
        down, mid = self._torch(sample.to(dtype), timestep, encoder_hidden_states=text.to(dtype),
                                controlnet_cond=cond.to(dtype), conditioning_scale=scale, guess_mode=guess_mode,
                                return_dict=False, **extra)
        return [d.float() for d in down], mid.float()
