"""Token merging: ToMe for Stable Diffusion (Bolya and Hoffman, 2023) on our own attention, the opt-in
``merge_tokens``.

At large sizes self-attention dominates: its cost grows with the square of the latent's pixels (a 2048x2048 image
has 65,536 tokens at SD's first level). Before each self-attention of the highest-resolution level that has any
(SD's first, SDXL's second, as ToMe for SD's ``max_downsample`` would be set for each), the tokens
are split into destinations (the top-left token of every 2x2 cell) and sources (the rest); the ``ratio`` x N
sources most similar to a destination (cosine similarity) are averaged into it, attention runs on the tokens left,
and afterwards every merged source takes its destination's output. Ratio 0.5 halves the tokens, so that attention
costs about a quarter. Nothing is random: the same request gives the same bytes. The result is an approximation and
is recorded.

A PyTorch UNet gets the merging as attention processors for the run; the OpenVINO stand-in runs such requests with
its PyTorch fallback (``merging_tokens``), since its traced graphs have no place for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

SIMILARITY_CHUNK = 2048  # sources compared at a time (a 2048x2048 image has 49,152 sources and 16,384 destinations)


def merge_plan(tokens: torch.Tensor, height: int, width: int, ratio: float
               ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """How to merge ``tokens`` (batch, height x width, channels) and how to spread the merged result back.

    Returns (merge, unmerge): merge maps (batch, N, C) to (batch, N - r, C); unmerge maps attention's output on
    the merged tokens back to (batch, N, C).
    """
    count, device = tokens.shape[1], tokens.device
    grid = torch.arange(count, device=device).view(height, width)
    cells = grid[: height - height % 2: 2, : width - width % 2: 2].reshape(-1)  # each 2x2 cell's top-left token
    is_destination = torch.zeros(count, dtype=torch.bool, device=device)
    is_destination[cells] = True
    destinations, sources = cells, torch.nonzero(~is_destination).squeeze(1)
    merged_count = min(int(count * ratio), sources.numel())

    with torch.no_grad():
        metric = tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        targets = metric[:, destinations].transpose(1, 2)
        best, partner = [], []
        for chunk in sources.split(SIMILARITY_CHUNK):  # (batch, chunk, destinations) at a time: bounded memory
            value, index = (metric[:, chunk] @ targets).max(dim=-1)
            best.append(value)
            partner.append(index)
        order = torch.cat(best, dim=1).argsort(dim=-1, descending=True, stable=True)
    partner = torch.cat(partner, dim=1)
    merged, kept = order[:, :merged_count], order[:, merged_count:]  # indices into ``sources``
    partner_of_merged = partner.gather(1, merged)  # indices into ``destinations``

    def merge(x: torch.Tensor) -> torch.Tensor:
        source_values, destination_values = x[:, sources], x[:, destinations]
        moved = source_values.gather(1, _rows(merged, x))
        destination_values = destination_values.scatter_reduce(1, _rows(partner_of_merged, x), moved, reduce="mean",
                                                               include_self=True)
        return torch.cat([source_values.gather(1, _rows(kept, x)), destination_values], dim=1)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        staying, destination_values = y[:, : kept.shape[1]], y[:, kept.shape[1]:]
        out = y.new_zeros(y.shape[0], count, y.shape[-1])
        out[:, destinations] = destination_values
        source_out = y.new_zeros(y.shape[0], sources.numel(), y.shape[-1])
        source_out.scatter_(1, _rows(kept, y), staying)
        source_out.scatter_(1, _rows(merged, y), destination_values.gather(1, _rows(partner_of_merged, y)))
        out[:, sources] = source_out
        return out

    return merge, unmerge


def _rows(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``index`` (batch, k) widened to pick or place whole tokens of ``like`` (batch, N, channels)."""
    return index.unsqueeze(-1).expand(-1, -1, like.shape[-1])


class MergingSelfAttention:
    """An attention processor that merges the tokens before self-attention at one level of the UNet (``level``
    halvings of the latent's size) and spreads the output back; at other levels it changes nothing."""

    def __init__(self, inner: Any, ratio: float, latent: Callable[[], tuple[int, int]], level: int) -> None:
        self.inner, self.ratio, self.latent, self.level = inner, ratio, latent, level

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        size = _level_size(hidden_states.shape[1], *self.latent(), self.level)
        if encoder_hidden_states is not None or hidden_states.ndim != 3 or size is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        merge, unmerge = merge_plan(hidden_states, *size, self.ratio)
        return unmerge(self.inner(attn, merge(hidden_states), None, *args, **kwargs))


def _level_size(tokens: int, height: int, width: int, level: int) -> tuple[int, int] | None:
    """The (height, width) of the latent after ``level`` halvings (stride-2 convolutions round up) when a block's
    ``tokens`` are that many, else None (another level)."""
    for _ in range(level):
        height, width = -(-height // 2), -(-width // 2)
    return (height, width) if height * width == tokens else None


def first_attention_level(unet: Any) -> int:
    """The highest-resolution level with self-attention, where the tokens are most: SD's first, SDXL's second."""
    return next((index for index, block in enumerate(unet.down_blocks) if getattr(block, "attentions", None)), 0)


@contextlib.contextmanager
def merging_tokens(unet: Any, ratio: float) -> Iterator[None]:
    """``unet`` (a PyTorch UNet2DConditionModel) with its self-attention merging ``ratio`` of the tokens, for the
    duration; its own attention processors afterwards."""
    latent: list[tuple[int, int]] = [(0, 0)]

    def remember(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs["sample"]
        latent[0] = (int(sample.shape[-2]), int(sample.shape[-1]))

    own = unet.attn_processors
    level = first_attention_level(unet)
    patched = {name: MergingSelfAttention(processor, ratio, lambda: latent[0], level)
               if name.endswith("attn1.processor") else processor for name, processor in own.items()}
    handle = unet.register_forward_pre_hook(remember, with_kwargs=True)
    unet.set_attn_processor(patched)
    try:
        yield
    finally:
        handle.remove()
        unet.set_attn_processor(own)
