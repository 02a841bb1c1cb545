"""Structure control: a ControlNet steering every denoising step from a control map (edges, depth, a tile...).

``ControlUnit`` is the request's part (up to three in ``GenerationRequest.control``): which ControlNet, which map,
how strongly and during which steps. The engine loads the ControlNet once per weights (its part cache), fits the
map to the working size and hands the loop a ``ControlConditioner``, which runs the ControlNet at each step of
its window and gives the UNet its residuals, as diffusers' ``StableDiffusionControlNetImg2ImgPipeline`` does.

Control modes, as A1111's ControlNet extension names them: ``balanced`` (the residuals as they are), ``control``
(the ControlNet sees the conditional half only and its residuals grow from shallow to deep layers: diffusers'
guess mode) and ``prompt`` (the residuals fade towards the shallow layers, 0.825 per layer, so the prompt wins).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from img2img.engine.conditioning import Begin, Conditioner, StartLatents, Step, TextConditioner
from img2img.engine.fields import scalar
from img2img.engine.preprocessors import PREPROCESSORS
from img2img.engine.sizing import RESIZE_MODES
from img2img.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

MAX_UNITS = 3
MODES: tuple[str, ...] = ("balanced", "prompt", "control")
PROMPT_MODE_DECAY = 0.825  # per layer from the deepest, as A1111's "my prompt is more important"


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet and its map.

    Attributes:
        model: a diffusers ControlNet folder (its path).
        image: the control map (a PIL image or a path); None: the source itself.
    """

    model: str | Path
    image: Image.Image | Path | str | None = None
    weight: float = scalar(float, 1.0, "How strongly the map steers (0: not at all).", 0.0, 2.0)
    start: float = scalar(float, 0.0, "The share of the steps after which the unit starts acting.", 0.0, 1.0)
    end: float = scalar(float, 1.0, "The share of the steps after which it stops.", 0.0, 1.0)
    mode: str = scalar(str, "balanced", "Which side wins: balanced, prompt (the prompt) or control (the map).",
                       choices=MODES)
    resize: str = scalar(str, "just", "How the map fits the working size: just, crop or fill.", choices=RESIZE_MODES)
    preprocessor: str = scalar(str, "none", "How the map is made from the image (img2img preprocess --list); none: "
                               "the image is a map already.", choices=tuple(PREPROCESSORS))
    threshold_a: float | None = scalar(float, None, "The preprocessor's first setting.", 0.0, 1024.0,
                                       unset="the preprocessor's")
    threshold_b: float | None = scalar(float, None, "Its second setting.", 0.0, 1024.0, unset="the preprocessor's")

    def validated(self) -> ControlUnit:
        from img2img.engine.fields import field_table
        from img2img.engine.request import check_scalar

        for spec in field_table(ControlUnit):
            value = getattr(self, spec.name)
            if value is not None or spec.default is not None:
                check_scalar(spec, value)
        if self.start > self.end:
            raise InvalidArgument("end", f"at least start ({self.start})", self.end)
        if not isinstance(self.model, str | Path) or not str(self.model):
            raise InvalidArgument("model", "a ControlNet's folder", self.model)
        return self


def check_units(units: object) -> tuple[ControlUnit, ...]:
    """A request's ``control``: up to MAX_UNITS ControlUnit objects, each checked."""
    if not isinstance(units, tuple | list) or not all(isinstance(unit, ControlUnit) for unit in units):
        raise InvalidArgument("control", "a tuple of img2img.ControlUnit", type(units).__name__)
    if len(units) > MAX_UNITS:
        raise InvalidArgument("control", f"at most {MAX_UNITS} units", len(units))
    return tuple(unit.validated() for unit in units)


@dataclass(frozen=True, eq=False)
class ControlConditioner(Conditioner):
    """A loaded ControlNet, its map at the working size (RGB), and the unit's settings."""

    controlnet: Any
    image: Image.Image
    unit: ControlUnit
    image_sha256: str = ""
    # Bound per image by ``begin``:
    text: TextConditioner | None = None
    cond: torch.Tensor | None = None
    kind = "controlnet"
    inputs = ("down_block_additional_residuals", "mid_block_additional_residual")

    def begin(self, begin: Begin) -> tuple[Conditioner, StartLatents]:
        import numpy as np
        import torch

        pixels = torch.from_numpy(np.asarray(self.image.convert("RGB"), dtype=np.float32) / 255)
        cond = pixels.permute(2, 0, 1)[None].to(self.controlnet.device, self.controlnet.dtype)
        return replace(self, text=begin.text, cond=cond), begin.start

    def active(self, step: Step) -> bool:
        """diffusers' rule: the unit acts at step i of n when start <= i/n and (i+1)/n <= end."""
        return not (step.index / step.total < self.unit.start or (step.index + 1) / step.total > self.unit.end)

    def unet_inputs(self, step: Step) -> dict[str, Any]:
        import torch

        if self.text is None or self.cond is None or step.sample is None or not self.active(step) \
                or self.unit.weight == 0:
            return {}
        guess = self.unit.mode == "control"
        sample, embeddings, cond = step.sample, self.text.embeddings, self.cond
        added = self.text.added
        if step.guided and guess:  # the conditional half only; the unconditional gets no residuals
            sample, embeddings = sample.chunk(2)[1], embeddings.chunk(2)[1]
            added = {key: value.chunk(2)[1] for key, value in added.items()} if added else None
        elif step.guided:
            cond = torch.cat([cond] * 2)
        extra = {"added_cond_kwargs": added} if added else {}
        down, mid = self.controlnet(sample.to(self.controlnet.dtype), step.timestep, encoder_hidden_states=embeddings,
                                    controlnet_cond=cond, conditioning_scale=self.unit.weight, guess_mode=guess,
                                    return_dict=False, **extra)
        if self.unit.mode == "prompt":
            scales = [PROMPT_MODE_DECAY ** (len(down) - k) for k in range(len(down) + 1)]
            down, mid = [d * s for d, s in zip(down, scales, strict=False)], mid * scales[-1]
        if step.guided and guess:
            down, mid = [torch.cat([torch.zeros_like(d), d]) for d in down], torch.cat([torch.zeros_like(mid), mid])
        return {"down_block_additional_residuals": list(down), "mid_block_additional_residual": mid}

    def metadata(self) -> dict[str, Any] | None:
        return {"model": Path(str(self.unit.model)).name, "weight": self.unit.weight, "start": self.unit.start,
                "end": self.unit.end, "mode": self.unit.mode, "resize": self.unit.resize,
                "preprocessor": self.unit.preprocessor, "threshold_a": self.unit.threshold_a,
                "threshold_b": self.unit.threshold_b, "image_sha256": self.image_sha256}
