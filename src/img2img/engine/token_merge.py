"""Token merging: ToMe for Stable Diffusion (Bolya and Hoffman, 2023) on our own attention, the opt-in
``merge_tokens``.

At large sizes self-attention dominates: its cost grows with the square of the latent's pixels (a 2048x2048 image
has 65,536 tokens at SD's first level). Before each self-attention of the highest-resolution level that has any
(SD's first, SDXL's second, as ToMe for SD's ``max_downsample`` would be set for each), and of the ``levels`` - 1
levels below it when asked (16,384 tokens at SD's second level for a 2048 image), the tokens are split into
destinations (the top-left token of every 2x2 cell) and sources (the rest); the ``ratio`` x N sources most similar
to a destination (cosine similarity) are averaged into it, attention runs on the tokens left, and afterwards every
merged source takes its destination's output. Ratio 0.5 halves the tokens, so that attention costs about a quarter.
Nothing is random: the same request gives the same bytes. The result is an approximation and is recorded.

A PyTorch UNet gets the merging as attention processors for the run; the OpenVINO stand-in runs a UNet graph traced
with the same processors (``img2img.models.ov_merge``), which is why ``merge_plan`` is written for tracing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

SIMILARITY_CHUNKS = 24  # sources compared in this many slices: 2,048 of a 2048x2048 image's 49,152 at a time
RATIO_PARTS = 10_000  # a ratio counted in parts per this many, so that every count of tokens is exact integer math


def merge_plan(tokens: torch.Tensor, height: Any, width: Any, ratio: float | torch.Tensor
               ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """How to merge ``tokens`` (batch, height x width, channels) and how to spread the merged result back.

    Returns (merge, unmerge): merge maps (batch, N, C) to (batch, N - r, C); unmerge maps attention's output on
    the merged tokens back to (batch, N, C). Written in tensor operations only, so that tracing (the OpenVINO
    graph, ``img2img.models.ov_merge``) keeps every size and ``ratio`` dynamic: ``height``, ``width`` and the
    token count may be traced sizes, and ``ratio`` a graph input: its parts per ``RATIO_PARTS`` (an int64 tensor).
    """
    count, device = tokens.shape[1], tokens.device
    destinations, sources = _split(count, height, width, device)
    source_count, destination_count = count - destinations.shape[0], destinations.shape[0]
    parts = ratio if isinstance(ratio, torch.Tensor) else torch.tensor(round(ratio * RATIO_PARTS))
    merged_count = torch.minimum(parts * count // RATIO_PARTS, torch.as_tensor(source_count))

    with torch.no_grad():
        metric = tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        targets = metric[:, destinations].transpose(1, 2)
        rows = (source_count + SIMILARITY_CHUNKS - 1) // SIMILARITY_CHUNKS
        best, partner = [], []
        for index in range(SIMILARITY_CHUNKS):  # (batch, rows, destinations) at a time: bounded memory
            chunk = sources[index * rows: (index + 1) * rows]
            value, nearest = (metric[:, chunk] @ targets).max(dim=-1)
            best.append(value)
            partner.append(nearest)
        order = _most_similar_first(torch.cat(best, dim=1))
    partner = torch.cat(partner, dim=1)
    merged, kept = order[:, :merged_count], order[:, merged_count:]  # indices into ``sources``
    partner_of_merged = partner.gather(1, merged)  # indices into ``destinations``
    # Where each token's output is in attention's: a kept source at its place, the rest at their destination's.
    kept_count, rank = source_count - merged_count, torch.arange(source_count, device=device).expand_as(order)
    place = torch.where(rank < merged_count, kept_count + partner.gather(1, order), rank - merged_count)
    batch = tokens.shape[0]
    source_place = torch.zeros_like(place).scatter(1, order, place)
    destination_place = kept_count + torch.arange(destination_count, device=device).expand(batch, -1)
    position = torch.zeros(batch, count, dtype=torch.long, device=device).scatter(
        1, sources.expand(batch, -1), source_place).scatter(1, destinations.expand(batch, -1), destination_place)

    def merge(x: torch.Tensor) -> torch.Tensor:
        source_values, destination_values = x[:, sources], x[:, destinations]
        moved = source_values.gather(1, _rows(merged, x))
        total = destination_values.scatter_add(1, _rows(partner_of_merged, x), moved)
        members = torch.ones_like(destination_values[..., :1]).scatter_add(
            1, partner_of_merged.unsqueeze(-1), torch.ones_like(moved[..., :1]))  # each destination and its merged
        return torch.cat([source_values.gather(1, _rows(kept, x)), total / members], dim=1)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        return y.gather(1, _rows(position, y))

    return merge, unmerge


def _split(count: Any, height: Any, width: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The destinations (the top-left token of every whole 2x2 cell) and the sources (every other token), each in
    raster order, by arithmetic alone: every shape follows from the latent's size, which keeps a traced graph's
    shapes static once its input's are."""
    cell_rows, cell_columns = height // 2, width // 2
    destinations = ((torch.arange(cell_rows, device=device) * (2 * width)).unsqueeze(1)
                    + torch.arange(cell_columns, device=device) * 2).reshape(-1)
    token = torch.arange(count, device=device)
    row, column = token // width, token % width
    is_destination = (row % 2 == 0) & (column % 2 == 0) & (row < 2 * cell_rows) & (column < 2 * cell_columns)
    source_count = count - destinations.shape[0]
    # Each source's place among the sources (counted in int64: a traced boolean sum would wrap at 256); the
    # destinations all go to one spare place, dropped.
    slot = torch.where(is_destination, source_count, torch.cumsum((~is_destination).long(), 0) - 1)
    sources = torch.zeros(source_count + 1, dtype=torch.long, device=device).scatter(0, slot, token)[:source_count]
    return destinations, sources


def _most_similar_first(best: torch.Tensor) -> torch.Tensor:
    """The sources' order by their best similarity (batch, sources), highest first, ties in raster order.

    A stable sort of the scores would give it, but OpenVINO's stable sort takes time quadratic in the count (5.3 s
    for a 2048x2048 image's 49,152 sources, five times a step); so each source gets a unique integer key, its score
    on a grid as fine as int32 allows for the count (OpenVINO computes integers in 32 bits), then its place, and
    the keys are sorted (0.02 s)."""
    count = best.shape[1]
    levels = 2**30 // count  # |key| < (levels + 1) x count <= 2**30 + count
    keys = (best.clamp(-1, 1) * levels).round().long() * count + (count - 1 - torch.arange(count, device=best.device))
    return keys.argsort(dim=-1, descending=True)


def _rows(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``index`` (batch, k) widened to pick or place whole tokens of ``like`` (batch, N, channels)."""
    return index.unsqueeze(-1).expand(-1, -1, like.shape[-1])


class MergingSelfAttention:
    """An attention processor that merges the tokens before self-attention at some levels of the UNet (``levels``:
    how many halvings of the latent's size each has had) and spreads the output back; at others it changes
    nothing."""

    def __init__(self, inner: Any, ratio: float, latent: Callable[[], tuple[int, int]], levels: range) -> None:
        self.inner, self.ratio, self.latent, self.levels = inner, ratio, latent, levels

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        sizes = (_level_size(hidden_states.shape[1], *self.latent(), level) for level in self.levels)
        size = next((size for size in sizes if size is not None), None) if hidden_states.ndim == 3 else None
        if encoder_hidden_states is not None or size is None:
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
def merging_tokens(unet: Any, ratio: float, levels: int = 1) -> Iterator[None]:
    """``unet`` (a PyTorch UNet2DConditionModel) with its self-attention merging ``ratio`` of the tokens at the
    ``levels`` highest-resolution levels that have any, for the duration; its own attention processors
    afterwards."""
    latent: list[tuple[int, int]] = [(0, 0)]

    def remember(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs["sample"]
        latent[0] = (sample.shape[-2], sample.shape[-1])  # traced sizes while tracing, so they stay dynamic

    own = unet.attn_processors
    first = first_attention_level(unet)
    patched = {name: MergingSelfAttention(processor, ratio, lambda: latent[0], range(first, first + levels))
               if name.endswith("attn1.processor") else processor for name, processor in own.items()}
    handle = unet.register_forward_pre_hook(remember, with_kwargs=True)
    unet.set_attn_processor(patched)
    try:
        yield
    finally:
        handle.remove()
        unet.set_attn_processor(own)
