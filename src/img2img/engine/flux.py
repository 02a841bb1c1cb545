"""FLUX.1 (dev, schnell): its transformer behind the UNet's call, its prompt encoding and its schedule.

- The transformer takes the latents as a sequence of 2x2 patches (64 values each) with each patch's position
  (``img_ids``) beside the text's (``txt_ids``, zeros), the timestep divided by 1000, and for [dev] the guidance
  scale as an input (guidance was distilled into the model: one pass per step, no unconditional row).
  ``FluxDenoiser`` packs, calls and unpacks, so the loop sees latents of (1, 16, h, w) as for any model; an odd
  side is padded by one latent and cropped back, as for SD 3.
- The prompt: CLIP-L's pooled embedding (of the first 77-token chunk with A1111's syntax) and T5's 512 tokens.
- The schedule: sigmas evenly spaced from 1 to 1/steps, shifted by the image's token count where the model asks
  for it (``use_dynamic_shifting``: [dev]), as diffusers' Flux pipelines build it for Euler; DPM++ 2M spaces its
  own flow sigmas and takes the same shift.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from img2img.engine.conditioning import TextConditioner
from img2img.engine.denoiser import DenoiserConfig, TransformerCall
from img2img.engine.prompt_syntax import chunks, extract_loras, parse, plain

FLUX_T5_TOKENS = 512  # diffusers' max_sequence_length for Flux


class FluxDenoiser(TransformerCall):
    """A ``FluxTransformer2DModel`` behind the UNet's call: (1, 16, h, w) latents in, the velocity out. Its input
    is four times as wide as the latents' channels (2x2 patches); guidance is its own input, in one row."""

    def __init__(self, transformer: Any) -> None:
        super().__init__(transformer, DenoiserConfig(int(transformer.config.in_channels) // 4, distilled_guidance=True))

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, *, encoder_hidden_states: torch.Tensor,
                 added_cond_kwargs: dict[str, torch.Tensor], timestep_cond: torch.Tensor | None = None,
                 reference_latents: torch.Tensor | None = None, return_dict: bool = False) -> tuple[torch.Tensor]:
        """``reference_latents``: Kontext's reference picture (``img2img.engine.kontext``), as tokens after the
        image's, at positions whose first coordinate is 1; their predictions are dropped."""
        batch, channels, height, width = sample.shape
        tokens, rows, columns = pack(sample)
        positions = patch_positions(rows, columns, sample.device, sample.dtype)
        if reference_latents is not None:
            reference, reference_rows, reference_columns = pack(reference_latents.to(sample.dtype))
            tokens = torch.cat([tokens, reference.expand(batch, -1, -1)], dim=1)
            positions = torch.cat([positions, patch_positions(reference_rows, reference_columns, sample.device,
                                                              sample.dtype, first=1.0)])
        guidance = None if timestep_cond is None else timestep_cond.to(torch.float32).expand(batch)
        output = self.transformer(
            hidden_states=tokens, timestep=timestep.expand(batch).to(sample.dtype) / 1000, guidance=guidance,
            pooled_projections=added_cond_kwargs["pooled_projections"], encoder_hidden_states=encoder_hidden_states,
            txt_ids=torch.zeros(encoder_hidden_states.shape[1], 3, device=sample.device, dtype=sample.dtype),
            img_ids=positions, return_dict=False)[0][:, :rows * columns]
        unpacked = output.reshape(batch, rows, columns, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return (unpacked.reshape(batch, channels, rows * 2, columns * 2)[..., :height, :width],)


def pack(latents: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(batch, channels, h, w) latents as (batch, patches, channels x 4) 2x2 patches, row by row, an odd side
    padded by repeating its edge; with the patch grid's rows and columns."""
    batch, channels, height, width = latents.shape
    padded = torch.nn.functional.pad(latents, (0, width % 2, 0, height % 2), mode="replicate")
    rows, columns = padded.shape[-2] // 2, padded.shape[-1] // 2
    packed = padded.view(batch, channels, rows, 2, columns, 2).permute(0, 2, 4, 1, 3, 5)
    return packed.reshape(batch, rows * columns, channels * 4), rows, columns


def patch_positions(rows: int, columns: int, device: torch.device, dtype: torch.dtype, first: float = 0.0
                    ) -> torch.Tensor:
    """Each patch's (first, row, column), row by row: the positions Flux's rotary embedding reads (Kontext's
    reference picture has 1 as its first coordinate)."""
    positions = torch.zeros(rows, columns, 3)
    positions[..., 0] = first
    positions[..., 1] = torch.arange(rows)[:, None]
    positions[..., 2] = torch.arange(columns)[None, :]
    return positions.reshape(rows * columns, 3).to(device=device, dtype=dtype)


def guidance_input(transformer: Any, guidance_scale: float) -> torch.Tensor | None:
    """[dev]'s guidance input (the scale itself); None for a model without one ([schnell])."""
    return torch.full([1], guidance_scale, dtype=torch.float32) if transformer.config.guidance_embeds else None


def schedule_options(scheduler: Any, steps: int, latent_size: tuple[int, int]) -> dict[str, Any]:
    """``set_timesteps`` keywords for a Flux schedule of ``steps`` at a latent size: sigmas from 1 to 1/steps (for
    Euler; the multistep solvers space their own flow sigmas), and the shift ``mu`` for the image's token count
    (2x2 patches) when the model shifts by size."""
    options: dict[str, Any] = {}
    if "sigmas" in inspect.signature(scheduler.set_timesteps).parameters:
        options["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    if scheduler.config.get("use_dynamic_shifting"):
        tokens = ((latent_size[0] + 1) // 2) * ((latent_size[1] + 1) // 2)
        config = scheduler.config
        slope = (config.get("max_shift", 1.15) - config.get("base_shift", 0.5)) / (
            config.get("max_image_seq_len", 4096) - config.get("base_image_seq_len", 256))
        options["mu"] = tokens * slope + config.get("base_shift", 0.5) - slope * config.get("base_image_seq_len", 256)
    return options


def encode_text_flux(pipeline: Any, prompt: str, syntax: str = "a1111") -> TextConditioner:
    """The prompt's conditioner: T5's embeddings, CLIP-L's pooled one as ``added``; one row (no negative)."""
    from img2img.engine.text_sd3 import words

    if syntax == "a1111":
        prompt = extract_loras(prompt)[0]
    tokenizer, encoder = pipeline.tokenizer, pipeline.text_encoder
    first = chunks(tokenizer, parse(prompt))[0] if syntax == "a1111" else plain(tokenizer, prompt)[0]
    ids = list(first.ids)
    end = ids.index(tokenizer.eos_token_id, 1)
    ids[end + 1:] = [tokenizer.pad_token_id] * (len(ids) - end - 1)
    pooled = encoder(torch.tensor([ids], device=encoder.device), output_hidden_states=False).pooler_output
    t5_text = words(prompt) if syntax == "a1111" else prompt
    t5_ids = pipeline.tokenizer_2(t5_text, padding="max_length", max_length=FLUX_T5_TOKENS, truncation=True,
                                  return_tensors="pt").input_ids
    t5 = pipeline.text_encoder_2(t5_ids.to(pipeline.text_encoder_2.device), output_hidden_states=False)[0]
    device = pipeline.transformer.device
    return TextConditioner(t5.to(device, pipeline.text_encoder_2.dtype),
                           {"pooled_projections": pooled.to(device, encoder.dtype)}, None)
