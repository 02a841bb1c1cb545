"""Model families: what we recognise, how we recognise it, and the defaults each one runs with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from img2img.engine.samplers import DEFAULT_SAMPLER, FLOW_DEFAULT_SAMPLER, FLOW_SAMPLERS, SAMPLERS

Base = Literal["sd1", "sd2", "sdxl", "sd3", "flux"]
Distillation = Literal["turbo", "lcm"] | None
Prediction = Literal["epsilon", "v_prediction", "flow"]  # "flow": a flow-matching model predicts the velocity


@dataclass(frozen=True)
class Family:
    base: Base
    prediction: Prediction = "epsilon"
    distillation: Distillation = None
    inpainting: bool = False  # a 9-channel UNet, trained to take the mask and the masked source beside its latents
    edit: bool = False  # takes the source beside its latents: InstructPix2Pix (an 8-channel UNet), Flux Kontext

    @property
    def label(self) -> str:
        """A short human name, e.g. "SD 2.x (v-prediction)", "SDXL turbo", "SD 1.x inpainting" or "SD 1.x edit"."""
        if self.base == "flux":  # [schnell] was distilled to few steps; [dev] takes guidance as an input
            return "FLUX.1 Kontext" if self.edit else "FLUX.1 [schnell]" if self.distillation else "FLUX.1 [dev]"
        name = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD 3.x"}[self.base]
        if self.prediction == "v_prediction":
            name += " (v-prediction)"
        if self.distillation:
            name += f" {self.distillation}"
        if self.inpainting:
            name += " inpainting"
        if self.edit:
            name += " edit"
        return name

    @property
    def flow(self) -> bool:
        """Whether the model is a flow-matching one (SD 3.x): its start is a point on the straight path between the
        source's latents and noise, and its samplers are the flow-matching ones (``img2img.engine.samplers``)."""
        return self.prediction == "flow"

    @property
    def native_side(self) -> int:
        """The side in pixels of the square the family was trained at."""
        if self.base in ("sdxl", "sd3", "flux"):
            return 1024
        if self.base == "sd2" and self.prediction == "v_prediction" and self.distillation is None:
            return 768
        return 512

    @property
    def default_steps(self) -> int:
        if self.flow:
            return 4 if self.distillation else 28  # SD 3.5 Large Turbo's 4; SD 3's reference 28
        return {"turbo": 2, "lcm": 4, None: 25}[self.distillation]

    @property
    def default_guidance(self) -> float:
        if self.base == "flux":  # [dev]'s distilled guidance (Kontext's: BFL's 2.5); [schnell] has none
            return 0.0 if self.distillation else 2.5 if self.edit else 3.5
        # Turbo models were distilled without guidance; LCM folds guidance into the UNet.
        return {"turbo": 0.0, "lcm": 1.0, None: 7.0}[self.distillation]

    @property
    def default_sampler(self) -> str:
        if self.flow:
            return FLOW_DEFAULT_SAMPLER
        return {"turbo": "Euler a", "lcm": "LCM", None: DEFAULT_SAMPLER}[self.distillation]

    @property
    def samplers(self) -> list[str]:
        """The sampler names this family runs with (a flow-matching model has its own, shorter table)."""
        if self.base == "flux":  # Euler on Flux's own sigmas; DPM++ 2M on its own, shifted alike
            return [FLOW_DEFAULT_SAMPLER, "DPM++ 2M"]
        return list(FLOW_SAMPLERS if self.flow else SAMPLERS)

    @property
    def default_image_guidance(self) -> float | None:
        """An edit model's image guidance (how closely it keeps the source; InstructPix2Pix's own default), else
        None: other models take the source only as their start."""
        return 1.5 if self.edit and self.base != "flux" else None  # Kontext reads the source without one

    @property
    def defaults_text(self) -> str:
        """What a request that sets nothing runs with, e.g. "25 steps, CFG 7, DPM++ 2M Karras"."""
        text = f"{self.default_steps} steps, CFG {self.default_guidance:g}, {self.default_sampler}"
        image = self.default_image_guidance
        return text if image is None else f"{text}, image CFG {image:g}"

    @property
    def unet_channels(self) -> int:
        return 9 if self.inpainting else 8 if self.edit else 4

    @property
    def config_name(self) -> str:
        """The name of the shipped architecture config that single-file loading uses (an inpainting or edit
        model's is its base's with 9 or 8 UNet input channels: ``img2img.models.loading.prepared_config_dir``)."""
        if self.base == "sd2":
            return "sd2-v" if self.prediction == "v_prediction" else "sd2"
        return self.base


def distillation_from_name(*names: str) -> Distillation:
    """Turbo and LCM weights look like their base model's; their names and metadata say what they are."""
    text = " ".join(names).lower()
    if re.search(r"turbo|lightning|hyper", text):
        return "turbo"
    if re.search(r"(^|[^a-z])lcm([^a-z]|$)|latent.consistency", text):
        return "lcm"
    return None


def base_from_cross_attention_dim(dim: int) -> Base | None:
    """The UNet's cross-attention width is the text encoder's: 768 (CLIP-L), 1024 (OpenCLIP-H), 2048 (SDXL)."""
    return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(dim)


# A UNet's input channels -> its kind: latents 4; inpainting 4 + mask 1 + masked source 4; edit 4 + source 4.
UNET_KINDS: dict[int, dict[str, bool]] = {4: {}, 9: {"inpainting": True}, 8: {"edit": True}}


def kind_from_channels(channels: int, base: Base, where: str) -> dict[str, bool]:
    """The Family keywords for a UNet of ``channels`` input channels (``inpainting`` or ``edit``); other kinds,
    and SDXL edit models, are refused by name."""
    from img2img.errors import UnknownModelFormat

    if channels not in UNET_KINDS:
        raise UnknownModelFormat(f"model's UNet should take 4 input channels (9 for inpainting, 8 for an "
                                 f"InstructPix2Pix edit model), but {where} takes {channels}")
    if channels == 8 and base == "sdxl":
        raise UnknownModelFormat(f"model should be an SD 1.x or 2.x edit model (InstructPix2Pix), but {where} is an "
                                 "SDXL one, which is not supported yet")
    return UNET_KINDS[channels]

