"""The prompt's conditioning: the text encoders' embeddings of the prompt and the negative prompt.

Two syntaxes (``GenerationRequest.prompt_syntax``):

- ``a1111`` (the default): A1111's weights, BREAK and prompts of any length (``img2img.engine.prompt_syntax``).
  Each chunk of 77 tokens is encoded on its own, its embeddings multiplied by the tokens' weights and scaled back to
  the chunk's mean (A1111's "original" emphasis; a chunk whose weights are all 1 is left as the encoder gave it, and
  one whose weighted mean is near zero, which random test weights produce, is not rescaled). The chunks are joined
  along the sequence, and the positive and negative prompts padded with empty chunks to the same length. SDXL
  encodes each chunk with both encoders and takes its pooled embedding from the first chunk.
- ``plain``: the text as diffusers reads it, cut at 77 tokens: what every file before this syntax existed means
  (the same ids and encoder calls as diffusers' ``encode_prompt``, which cannot skip CLIP layers with
  transformers 5).

A prompt of up to 75 tokens with no weights gives the same embeddings, byte for byte, in both.
``clip_skip`` is A1111's "Clip skip": 1 uses the encoder's last layer, N the N-th from the end (SDXL counts from
its penultimate layer, as it was trained).
"""

from __future__ import annotations

from typing import Any

import torch

from img2img.engine.conditioning import TextConditioner
from img2img.engine.prompt_syntax import Chunk, chunks, extract_loras, parse, plain

NEAR_ZERO = 1e-3  # a weighted mean below this fraction of the mean magnitude is not divided by


def encode_text(pipeline: Any, prompt: str, negative_prompt: str, guided: bool, size: tuple[int, int],
                syntax: str = "a1111", clip_skip: int = 1) -> TextConditioner:
    """The prompt's conditioner: embeddings as [negative, positive] when guided, and SDXL's added inputs."""
    xl = hasattr(pipeline, "text_encoder_2")
    if syntax == "a1111":  # LoRA tags act on the model, not as words (img2img.models.loras)
        prompt, negative_prompt = extract_loras(prompt)[0], extract_loras(negative_prompt, "negative_prompt")[0]
    positive, pooled = _encode(pipeline, prompt, syntax, clip_skip, xl)
    negative = negative_pooled = None
    if guided and xl and not negative_prompt and pipeline.config.force_zeros_for_empty_prompt:
        negative, negative_pooled = torch.zeros_like(positive), torch.zeros_like(pooled)  # as SDXL was trained
    elif guided:
        negative, negative_pooled = _encode(pipeline, negative_prompt, syntax, clip_skip, xl)
        positive, negative = _same_length(pipeline, positive, negative, clip_skip, xl)
    device, dtype = pipeline.unet.device, pipeline.unet.dtype
    added = None
    if xl:
        time_ids = torch.tensor([[*size, 0, 0, *size]], device=device, dtype=dtype)  # original, crop, target
        if guided:
            pooled = torch.cat([negative_pooled, pooled])
            time_ids = time_ids.repeat(2, 1)
        added = {"text_embeds": pooled.to(device), "time_ids": time_ids}
    embeddings = torch.cat([negative, positive]) if guided else positive
    return TextConditioner(embeddings, added, None)


def text_encoders(pipeline: Any) -> list[tuple[Any, Any]]:
    pairs = [(getattr(pipeline, "tokenizer", None), getattr(pipeline, "text_encoder", None)),
             (getattr(pipeline, "tokenizer_2", None), getattr(pipeline, "text_encoder_2", None))]
    return [(tokenizer, encoder) for tokenizer, encoder in pairs if encoder is not None]


def _encode(pipeline: Any, text: str, syntax: str, clip_skip: int, xl: bool
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One text's embeddings, chunk by chunk and encoder by encoder, and SDXL's pooled embedding."""
    parsed = parse(text) if syntax == "a1111" else None
    per_encoder, pooled = [], None
    for tokenizer, encoder in text_encoders(pipeline):
        expand = embedding_tokens(pipeline, tokenizer)
        pieces = chunks(tokenizer, parsed, expand) if parsed is not None else [plain(tokenizer, text)[0]]
        encoded = [encode_chunk(encoder, tokenizer, chunk, clip_skip, xl) for chunk in pieces]
        per_encoder.append(torch.cat([hidden for hidden, _ in encoded], dim=1))
        pooled = encoded[0][1] if encoded[0][1] is not None else pooled  # the last encoder's, from the first chunk
    embeddings = torch.cat(per_encoder, dim=-1) if xl else per_encoder[0]
    return embeddings.to(device=pipeline.unet.device), pooled


def embedding_tokens(pipeline: Any, tokenizer: Any) -> Any:
    """Text to text with each loaded embedding's name spelled as its tokens (one per vector), or None."""
    if not pipeline.__dict__.get("img2img_embeddings"):
        return None
    from img2img.models.embeddings import spell

    return lambda text: spell(pipeline, tokenizer, text)


def encode_chunk(encoder: Any, tokenizer: Any, chunk: Chunk, clip_skip: int, xl: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk through one encoder: (1, 77, C) hidden states, weighted; and its pooled output (SDXL's second)."""
    ids = list(chunk.ids)
    first_end = ids.index(tokenizer.eos_token_id, 1)
    ids[first_end + 1:] = [tokenizer.pad_token_id] * (len(ids) - first_end - 1)  # OpenCLIP pads with its own token
    tensor = torch.tensor([ids], device=encoder.device)
    mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        mask = torch.tensor([[1] * (first_end + 1) + [0] * (len(ids) - first_end - 1)], device=encoder.device)
    output = encoder(tensor, attention_mask=mask, output_hidden_states=xl or clip_skip > 1)
    if xl:
        hidden = output.hidden_states[-(clip_skip + 1)]
    elif clip_skip > 1:  # the skipped-to layer goes through the final norm, as the last one does
        hidden = getattr(encoder, "text_model", encoder).final_layer_norm(output.hidden_states[-clip_skip])
    else:
        hidden = output[0]
    pooled = output[0] if xl and output[0].ndim == 2 else None
    return _emphasis(hidden, chunk.weights).to(encoder.dtype), pooled


def _emphasis(hidden: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Each token's embedding times its weight, then the whole scaled back to the chunk's mean (A1111's)."""
    if all(weight == 1.0 for weight in weights):
        return hidden
    values = hidden.float()
    before = values.mean()
    weighted = values * torch.tensor(weights, dtype=torch.float32, device=values.device).reshape(1, -1, 1)
    after = weighted.mean()
    if after.abs() >= NEAR_ZERO * values.abs().mean():
        weighted = weighted * (before / after)
    return weighted


def _same_length(pipeline: Any, positive: torch.Tensor, negative: torch.Tensor, clip_skip: int, xl: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the shorter of the two with the empty prompt's chunk until both have as many chunks."""
    if positive.shape[1] == negative.shape[1]:
        return positive, negative
    empty, _ = _encode(pipeline, "", "a1111", clip_skip, xl)

    def padded(embeddings: torch.Tensor, length: int) -> torch.Tensor:
        repeats = (length - embeddings.shape[1]) // empty.shape[1]
        return torch.cat([embeddings, empty.repeat(1, repeats, 1)], dim=1)

    length = max(positive.shape[1], negative.shape[1])
    return padded(positive, length), padded(negative, length)
