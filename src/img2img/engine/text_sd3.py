"""SD 3.x's prompt conditioning: two CLIP encoders and T5, as ``StableDiffusion3Pipeline.encode_prompt`` joins them.

Each CLIP encoder gives its penultimate layer (``clip_skip`` counts back from there, as for SDXL) and its pooled,
projected embedding; the two layers are joined along the width, padded with zeros to T5's width and followed along
the sequence by T5's 256 tokens (zeros when the model was loaded without T5). The pooled embeddings of both CLIP
encoders, joined, are the transformer's ``pooled_projections``.

With A1111's syntax the CLIP part is read as for SD (weights, BREAK, prompts of any length in chunks of 77: the
shared code of ``img2img.engine.text``); T5 reads the words with the weights' brackets taken out, as it has no
chunks. A prompt of up to 75 tokens with no weights gives diffusers' embeddings exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from img2img.engine.conditioning import TextConditioner
from img2img.engine.prompt_syntax import chunks, extract_loras, parse, plain
from img2img.engine.text import embedding_tokens, encode_chunk, text_encoders

T5_TOKENS = 256  # the T5 sequence SD 3 was trained with (diffusers' max_sequence_length)


def encode_text_sd3(pipeline: Any, prompt: str, negative_prompt: str, guided: bool, syntax: str = "a1111",
                    clip_skip: int = 1) -> TextConditioner:
    """The prompt's conditioner: [negative, positive] embeddings when guided, the pooled ones as ``added``."""
    if syntax == "a1111":
        prompt, negative_prompt = extract_loras(prompt)[0], extract_loras(negative_prompt, "negative_prompt")[0]
    texts = [negative_prompt, prompt] if guided else [prompt]
    clip = [_clip(pipeline, text, syntax, clip_skip) for text in texts]
    longest = max(hidden.shape[1] for hidden, _ in clip)
    if any(hidden.shape[1] < longest for hidden, _ in clip):  # the shorter padded with the empty prompt's chunks
        empty = _clip(pipeline, "", syntax, clip_skip)[0]
        clip = [(torch.cat([hidden, empty.repeat(1, (longest - hidden.shape[1]) // empty.shape[1], 1)], dim=1),
                 pooled) for hidden, pooled in clip]
    rows = []
    for text, (hidden, _) in zip(texts, clip, strict=True):
        t5 = _t5(pipeline, words(text) if syntax == "a1111" else text)
        hidden = torch.nn.functional.pad(hidden, (0, t5.shape[-1] - hidden.shape[-1]))
        rows.append(torch.cat([hidden, t5.to(hidden.dtype)], dim=1))
    pooled = torch.cat([pooled for _, pooled in clip])
    return TextConditioner(torch.cat(rows), {"pooled_projections": pooled}, None)


def _clip(pipeline: Any, text: str, syntax: str, clip_skip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both CLIP encoders' penultimate layers for ``text``, joined along the width, and their pooled embeddings."""
    parsed = parse(text) if syntax == "a1111" else None
    hidden, pooled = [], []
    for tokenizer, encoder in text_encoders(pipeline):
        pieces = chunks(tokenizer, parsed, embedding_tokens(pipeline, tokenizer)) if parsed is not None \
            else [plain(tokenizer, text)[0]]
        encoded = [encode_chunk(encoder, tokenizer, chunk, clip_skip, xl=True) for chunk in pieces]
        hidden.append(torch.cat([states for states, _ in encoded], dim=1))
        pooled.append(encoded[0][1])
    device = pipeline.transformer.device
    return torch.cat(hidden, dim=-1).to(device), torch.cat(pooled, dim=-1).to(device)


def _t5(pipeline: Any, text: str) -> torch.Tensor:
    """T5's (1, 256, width) embeddings of ``text``, or zeros of the transformer's text width without T5."""
    encoder, device = getattr(pipeline, "text_encoder_3", None), pipeline.transformer.device
    if encoder is None:
        width = pipeline.transformer.config.joint_attention_dim
        return torch.zeros((1, T5_TOKENS, width), device=device, dtype=pipeline.text_encoder.dtype)
    ids = pipeline.tokenizer_3(text, padding="max_length", max_length=T5_TOKENS, truncation=True,
                               add_special_tokens=True, return_tensors="pt").input_ids
    return encoder(ids.to(encoder.device))[0].to(device)


def words(text: str) -> str:
    """The prompt's words with A1111's weight brackets and BREAKs taken out (T5 reads no weights)."""
    return " ".join(" ".join(piece.text.split()) for piece in parse(text).pieces if piece.text.strip())
