"""Conditioners: the kinds of conditioning that act inside the denoising loop, on one small protocol.

The loop (``img2img.engine.diffusion.denoise``) knows nothing of prompts, masks or control maps. Once per image,
after its start latents are drawn, each conditioner may bind itself to that image (``begin``). At every step the
loop asks each conditioner of the run for extra UNet inputs (keywords, or channels beside the latents), lets each
adjust the guided noise prediction, and lets each act on the latents after the sampler's step. Text conditioning
is the first conditioner; a new kind (a mask, a control unit, an image prompt) is a new class here or beside it
(``img2img.engine.mask_conditioner``), and never an edit of the loop.

Every hook is optional: ``Conditioner``'s own do nothing. A conditioner is an immutable value that describes
itself (``metadata``, written into each result's record, and ``cache_key``, what makes two of them the same).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass(frozen=True)
class StartLatents:
    """Where a run starts, with its parts kept for conditioners that need them (inpainting blends the clean
    latents, noised to the current step, back into the areas it keeps)."""

    clean: torch.Tensor | None  # the source's latents, scaled for the UNet; None when the run starts from noise
    noise: torch.Tensor  # the noise added at the first timestep (standard normal, float32)
    noised: torch.Tensor  # the sampler's starting latents
    pure: bool = False  # the run starts from pure noise (strength 1): ``noised`` holds no trace of ``clean``


@dataclass(frozen=True)
class Begin:
    """One image's start, for the conditioners to bind to (``Conditioner.begin``)."""

    pipeline: Any  # the run's diffusers components
    source: Image.Image  # the pass's source at the working size
    encode: Callable[[str, torch.Tensor], Any]  # (name, pixels in [-1, 1]) -> the VAE's latent distribution,
    # computed once per name and source
    noised: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (clean, noise) -> at the first step's level
    generator: torch.Generator  # the image's own, after the start latents were drawn
    start: StartLatents
    text: TextConditioner | None = None  # the prompt's conditioner of the run (a ControlNet reads its embeddings)


@dataclass(frozen=True)
class Step:
    """Where the loop is: the hooks' view of it."""

    index: int  # 0 for the first step that runs
    total: int  # steps that run in all
    timestep: torch.Tensor
    guided: bool  # classifier-free guidance: the UNet sees a batch of two, [unconditional, conditional]
    start: StartLatents
    scheduler: Any
    next_timestep: torch.Tensor | None = None  # None at the last step
    sample: torch.Tensor | None = None  # the UNet's latents input after the sampler's scaling (two rows when guided)
    rows: int = 1  # the batch the UNet sees: 1, 2 when guided, or a guiding conditioner's own (``guidance_rows``)


class Conditioner:
    """One kind of conditioning. Subclasses override the hooks they need; the defaults change nothing."""

    kind = "conditioner"  # the name of the kind, in records and errors
    # A conditioner that guides with more than the prompt (an edit model's image guidance) asks for this many
    # rows when the run is guided, from the unconditional first to the fully conditional last, and combines their
    # predictions (``guide``); 0: the prompt's classifier-free guidance, two rows. One per run at most.
    guidance_rows = 0
    # The UNet keyword inputs that unet_inputs gives, declared so that a backend is checked before a run
    # (img2img.models.backends): one that does not take them hands the UNet to another, or refuses.
    inputs: tuple[str, ...] = ()

    def attach(self, pipeline: Any) -> contextlib.AbstractContextManager[None]:
        """What the conditioner puts on the model for one run and takes off after it (an image prompt's attention
        layers), as a context the run enters; the pipeline is as it was once the run ends."""
        return contextlib.nullcontext()

    def needs_source_latents(self) -> bool:
        """Whether the run must encode the source even when it starts from pure noise (strength 1)."""
        return False

    def begin(self, begin: Begin) -> tuple[Conditioner, StartLatents]:
        """Once per image, after its start latents are drawn: this conditioner bound to the image, and the start
        (which a conditioner may change, as a mask's content does in the area it repaints)."""
        return self, begin.start

    def extend_sample(self, step: Step, sample: torch.Tensor) -> torch.Tensor:
        """The UNet's sample input after the sampler's scaling (an inpainting UNet takes channels beside it)."""
        return sample

    def unet_inputs(self, step: Step) -> dict[str, Any]:
        """Keyword inputs for the UNet at ``step`` (batched as the step says: two rows when guided); only those
        declared in ``inputs``."""
        return {}

    def guide(self, noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """The guided prediction from the UNet's ``guidance_rows`` rows (only a conditioner that asks for rows)."""
        raise NotImplementedError

    def adjust_prediction(self, step: Step, noise_pred: torch.Tensor) -> torch.Tensor:
        """The noise prediction after guidance, before the sampler's step."""
        return noise_pred

    def after_step(self, step: Step, latents: torch.Tensor) -> torch.Tensor:
        """The latents after the sampler's step."""
        return latents

    def metadata(self) -> dict[str, Any] | None:
        """This conditioner's entry in the record of each result (JSON values), or None for no entry."""
        return None

    def cache_key(self) -> tuple[Any, ...]:
        """What makes two conditioners of this kind the same (by default: their kind and metadata)."""
        return (self.kind, json.dumps(self.metadata(), sort_keys=True))


@dataclass(frozen=True, eq=False)
class TextConditioner(Conditioner):
    """The prompt: text embeddings as cross-attention input, SDXL's pooled embedding and size conditioning, and
    LCM's guidance embedding."""

    embeddings: torch.Tensor  # (2, 77, C) as [negative, positive] when guided, else (1, 77, C)
    added: dict[str, torch.Tensor] | None  # SDXL's text_embeds and time_ids
    timestep_cond: torch.Tensor | None  # LCM's guidance embedding
    kind = "text"
    inputs = ("encoder_hidden_states", "timestep_cond", "added_cond_kwargs")

    def unet_inputs(self, step: Step) -> dict[str, Any]:
        if step.rows <= 2:
            return {"encoder_hidden_states": self.embeddings, "timestep_cond": self.timestep_cond,
                    "added_cond_kwargs": self.added}
        added = None if self.added is None else {name: _rows(value, step.rows) for name, value in self.added.items()}
        return {"encoder_hidden_states": _rows(self.embeddings, step.rows), "timestep_cond": self.timestep_cond,
                "added_cond_kwargs": added}


def _rows(pair: torch.Tensor, rows: int) -> torch.Tensor:
    """[negative, positive] as ``rows`` rows: the negative for every row but the last (they are conditioned on
    something other than the prompt, or on nothing)."""
    import torch

    return torch.cat([pair[:1]] * (rows - 1) + [pair[1:]])


# Inputs that several conditioners may give at once: their values add up (ControlNets' residuals, as diffusers'
# MultiControlNetModel sums them, and T2I-Adapters' features, as its MultiAdapter does).
ADDITIVE = frozenset({"down_block_additional_residuals", "mid_block_additional_residual",
                      "down_intrablock_additional_residuals"})
# Inputs that travel inside another, as diffusers passes them: an image prompt's tokens go beside the text ones,
# as the tuple (text embeddings, [tokens per picture]) that its IP-Adapter attention reads.
JOINED = {"ip_hidden_states": "encoder_hidden_states"}


def unet_inputs(conditioners: tuple[Conditioner, ...], step: Step) -> dict[str, Any]:
    """Every conditioner's UNet inputs in one dict; two that give the same input (other than an additive one)
    are a fault of ours."""
    inputs: dict[str, Any] = {}
    for conditioner in conditioners:
        for name, value in conditioner.unet_inputs(step).items():
            if name not in conditioner.inputs:
                raise ValueError(f"the {conditioner.kind} conditioner gives the UNet's {name} without declaring it")
            if name in inputs and name not in ADDITIVE:
                raise ValueError(f"two conditioners give the UNet's {name} ({conditioner.kind} and another)")
            if name in inputs:
                before = inputs[name]
                value = [a + b for a, b in zip(before, value, strict=True)] if isinstance(value, list) else \
                    before + value
            inputs[name] = value
    for name, into in JOINED.items():
        if name in inputs and into in inputs:
            inputs[into] = (inputs[into], inputs.pop(name))
    return inputs


def check_conditions(conditions: object) -> tuple[Conditioner, ...]:
    """A request's ``conditions``: a tuple of conditioners (the text one is the engine's own, never given)."""
    from img2img.errors import InvalidArgument

    if not isinstance(conditions, tuple | list) or not all(isinstance(c, Conditioner) for c in conditions):
        raise InvalidArgument("conditions", "a tuple of img2img.engine.conditioning.Conditioner objects",
                              type(conditions).__name__)
    if any(isinstance(c, TextConditioner) for c in conditions):
        raise InvalidArgument("conditions", "conditioners other than text (the prompt is the request's prompt)",
                              "a TextConditioner")
    return tuple(conditions)
