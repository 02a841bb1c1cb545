"""Aim instead of guessing: the strength that keeps a given share of the source.

A request with ``keep_structure``, ``keep_colour`` or ``keep_detail`` (a retention score between 0 and 1, see
``img2img.imageio.retention``) asks for the strength at which the result keeps that much. ``find_strength`` looks
for it on a score that falls as the strength rises (strength 0 keeps everything): it tries strengths on cheap
previews (the same seed, prompt, model and steps at a working size of at most ``PREVIEW_SIDE``; the built-in
engine's previews are its full renders, which take a fraction of a second), each time between the closest strengths
that kept too much and too little (by linear interpolation of their scores, kept off the ends of the bracket), until
a preview lands within ``TOLERANCE``, ``MAX_TRIES`` previews have run, or no strength is left between the two. With
diffusers' steps mode a strength runs int(steps x strength) steps, so the search moves on multiples of 1/steps: the
strengths that give different pictures. The caller then renders the chosen strength at full quality.

A target above what the weakest strength (one step, or ``MIN_STRENGTH``) keeps cannot be met: the search says so
and chooses that strength, the closest result. Nor can one that even strength 1 keeps: it chooses strength 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from img2img.engine.request import KEEP_FIELDS, GenerationRequest
from img2img.engine.sizing import LATENT_MULTIPLE, MIN_SIDE, plan_sizes

if TYPE_CHECKING:
    from img2img.models.families import Family

MIN_STRENGTH = 0.05  # the weakest worth trying when any strength is its own (steps mode "exact")
TOLERANCE = 0.02  # a preview this close to the target ends the search
MAX_TRIES = 5  # previews at most, the weakest's check after them aside
PREVIEW_SIDE = 256  # a diffusion preview's longer side, at most
EDGE = 0.1  # an interpolated try stays this share of its bracket away from either end


@dataclass(frozen=True)
class Search:
    """What the search found: the strength to render, every (strength, score) it tried, and whether the target
    can be met."""

    metric: str
    target: float
    strength: float
    tries: tuple[tuple[float, float], ...]
    reachable: bool

    def describe(self) -> str:
        """One line: what was wanted, tried and chosen."""
        tried = ", ".join(f"{strength:.2f} kept {score:.2f}" for strength, score in self.tries)
        if self.reachable:
            return f"keep_{self.metric} {self.target:g}: strength {self.strength:.2f} (previews: {tried})"
        closest = dict(self.tries)[self.strength]
        limit = "any strength above 0" if closest < self.target else "any strength, 1 included"
        return (f"keep_{self.metric} {self.target:g} cannot be met at {limit} (strength {self.strength:g} keeps "
                f"{closest:.2f}); rendered the closest, strength {self.strength:g} (previews: {tried})")

    def as_dict(self) -> dict[str, object]:
        return {"metric": self.metric, "target": self.target, "strength": self.strength,
                "tries": [list(entry) for entry in self.tries], "reachable": self.reachable}


def find_strength(score_at: Callable[[float], float], metric: str, target: float, grid: int | None = None) -> Search:
    """The strength whose preview keeps ``target`` of ``metric``; ``score_at(strength)`` renders and scores one.

    ``grid``: the steps of a "diffusers" steps mode, where a strength runs int(steps x strength) of them, so only
    multiples of 1/steps differ (the weakest, one step, is 1/steps); None: any strength (to 0.01)."""
    weakest = 1 / grid if grid else MIN_STRENGTH
    tries: dict[float, float] = {}

    def snap(strength: float) -> float:
        strength = min(max(strength, weakest), 1.0)
        return round(max(1, round(strength * grid)) / grid if grid else strength, 3 if grid else 2)

    low, low_score = 0.0, 1.0  # the strongest strength known to keep more than the target (0 keeps all)
    high, high_score = 1.0, None  # the weakest known to keep less (unknown yet)
    strength: float | None = snap(0.5)
    moved, repeats = "", 0  # which end of the bracket the last try replaced, and how many times running
    while strength is not None and strength not in tries and len(tries) < MAX_TRIES:
        score = tries[strength] = score_at(strength)
        if abs(score - target) <= TOLERANCE:
            return Search(metric, target, strength, tuple(tries.items()), True)
        side = "low" if score > target else "high"
        repeats, moved = (repeats + 1 if side == moved else 0), side
        if side == "low":
            low, low_score = strength, score
        else:
            high, high_score = strength, score
        if high_score is None:  # everything tried keeps too much: stronger still
            strength = None if low >= 1.0 else snap(1.0 if low >= 0.75 else (low + high) / 2)
            continue
        # Illinois: when one end has stayed put, its score counts half as far from the target each time, so a
        # curved score does not creep up on the target from one side.
        kept_low = target + (low_score - target) / 2**repeats if moved == "high" else low_score
        kept_high = target - (target - high_score) / 2**repeats if moved == "low" else high_score
        strength = _inside(low, high, _between(low, kept_low, high, kept_high, target), snap, grid)
    return _settle(metric, target, tries, score_at, snap(weakest))


def _between(low: float, low_score: float, high: float, high_score: float, target: float) -> float:
    """Where the line through the bracket's two scores meets the target, kept off its ends."""
    share = (low_score - target) / (low_score - high_score) if low_score != high_score else 0.5
    return low + min(max(share, EDGE), 1 - EDGE) * (high - low)


def _inside(low: float, high: float, wanted: float, snap: Callable[[float], float], grid: int | None
            ) -> float | None:
    """The strength strictly inside (low, high) nearest ``wanted``, on the grid; None when there is none."""
    if grid:
        points = [n / grid for n in range(1, grid + 1) if low < n / grid < high]
        return snap(min(points, key=lambda point: abs(point - wanted))) if points else None
    wanted = snap(wanted)
    return wanted if low < wanted < high else None


def _settle(metric: str, target: float, tries: dict[float, float], score_at: Callable[[float], float],
            weakest: float) -> Search:
    """After the last preview: the tried strength nearest the target, or an end when the target lies beyond one."""
    if all(score < target for score in tries.values()):  # every try kept too little: the weakest decides
        if weakest not in tries:
            tries[weakest] = score_at(weakest)
        return Search(metric, target, weakest, tuple(tries.items()), tries[weakest] >= target - TOLERANCE)
    if all(score > target for score in tries.values()):  # every try kept too much: 1 is as far as it goes
        strongest = max(tries)
        return Search(metric, target, strongest, tuple(tries.items()), strongest < 1.0)
    nearest = min(tries, key=lambda strength: abs(tries[strength] - target))
    return Search(metric, target, nearest, tuple(tries.items()), True)


def previewed(request: GenerationRequest, strength: float, source_size: tuple[int, int], family: Family | None
              ) -> GenerationRequest:
    """The request as one cheap preview at ``strength``: for a diffusion model (``family``) at a working size of at
    most PREVIEW_SIDE pixels a side (its shorter side kept at MIN_SIDE or more). The steps stay: fewer would start
    from other noise levels than the render does, and keep another share of the source."""
    preview = replace(request, strength=strength, num_images=1, **dict.fromkeys(KEEP_FIELDS))
    if family is None:  # the built-in engine: its full render is cheap
        return preview
    output, _ = plan_sizes(source_size, family.native_side, request.size, request.max_side)
    scale = min(1.0, max(PREVIEW_SIDE / max(output), MIN_SIDE / min(output)))
    size = tuple(max(MIN_SIDE, round(side * scale / LATENT_MULTIPLE) * LATENT_MULTIPLE) for side in output)
    return replace(preview, size=size, max_side=None)
