"""Aim instead of guessing: the strength that keeps a given share of the source.

A request with ``keep_structure``, ``keep_colour`` or ``keep_detail`` (a retention score between 0 and 1, see
``img2img.imageio.retention``) asks for the strength at which the result keeps that much. ``find_strength`` looks
for it on a score that falls as the strength rises (strength 0 keeps everything): it tries strengths on cheap
previews (the same seed, prompt and model at a smaller working size with half the steps; the built-in engine's
previews are its full renders, which take a fraction of a second), each time between the closest strengths that
kept too much and too little (by linear interpolation of their scores, kept off the ends of the bracket), until a
preview lands within ``TOLERANCE`` or ``MAX_TRIES`` previews have run. The caller then renders the chosen strength
at full quality.

A target above what the weakest strength worth running (``MIN_STRENGTH``) keeps cannot be met: the search says so
and chooses that strength, the closest result. A target that even strength 1 keeps chooses strength 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from img2img.engine.request import KEEP_FIELDS, GenerationRequest
from img2img.engine.sizing import LATENT_MULTIPLE, MIN_SIDE, plan_sizes

if TYPE_CHECKING:
    from img2img.models.families import Family

MIN_STRENGTH = 0.05  # below this, a step or none runs: nothing worth choosing
TOLERANCE = 0.02  # a preview this close to the target ends the search
MAX_TRIES = 5  # previews at most (each about a sixth of a full render on the default path)
PREVIEW_SIDE = 256  # a diffusion preview's longer side, at most
PREVIEW_STEPS = 8  # a preview runs half the steps, but at least this many (all of them when fewer)
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


def find_strength(score_at: Callable[[float], float], metric: str, target: float) -> Search:
    """The strength whose preview keeps ``target`` of ``metric``; ``score_at(strength)`` renders and scores one."""
    tries: list[tuple[float, float]] = []

    def attempt(strength: float) -> float:
        score = score_at(strength)
        tries.append((strength, score))
        return score

    low, low_score = 0.0, 1.0  # the strongest strength known to keep at least the target (0 keeps all)
    high, high_score = 1.0, None  # the weakest known to keep less (unknown yet)
    strength = 0.5
    while len(tries) < MAX_TRIES:
        score = attempt(strength)
        if abs(score - target) <= TOLERANCE:
            return Search(metric, target, strength, tuple(tries), True)
        if score > target:
            low, low_score = strength, score
        else:
            high, high_score = strength, score
        if high_score is None:  # everything tried keeps too much: stronger still
            if low >= 1.0:
                break
            strength = 1.0 if low >= 0.75 else round((low + high) / 2, 2)
        elif low == 0.0 and high <= MIN_STRENGTH:  # even the weakest keeps too little
            break
        else:
            strength = _between(low, low_score, high, high_score, target)
    return _settle(metric, target, tuple(tries), attempt)


def _between(low: float, low_score: float, high: float, high_score: float, target: float) -> float:
    """Where the line through the bracket's two scores meets the target, kept off its ends; at least MIN_STRENGTH."""
    share = (low_score - target) / (low_score - high_score) if low_score != high_score else 0.5
    share = min(max(share, EDGE), 1 - EDGE)
    return round(max(low + share * (high - low), MIN_STRENGTH), 2)


def _settle(metric: str, target: float, tries: tuple[tuple[float, float], ...],
            attempt: Callable[[float], float]) -> Search:
    """After the last preview: the bracket's interpolated strength, or an end when the target lies beyond one."""
    below = [(strength, score) for strength, score in tries if score < target]
    above = [(strength, score) for strength, score in tries if score > target]
    if not above:  # every try kept too little: the weakest worth running decides
        weakest = min(tries)
        if weakest[0] > MIN_STRENGTH:
            score = attempt(MIN_STRENGTH)
            if score >= target - TOLERANCE:
                return Search(metric, target, MIN_STRENGTH, (*tries, (MIN_STRENGTH, score)), True)
            tries = (*tries, (MIN_STRENGTH, score))
        return Search(metric, target, MIN_STRENGTH, tries, False)
    if not below:  # every try kept too much: strength 1 when it was tried (the target is out of reach)
        strongest = max(tries)
        return Search(metric, target, strongest[0], tries, strongest[0] < 1.0)
    low, high = max(above), min(below)
    strength = _between(low[0], low[1], high[0], high[1], target) if high[0] > low[0] else low[0]
    return Search(metric, target, strength, tries, True)


def previewed(request: GenerationRequest, strength: float, source_size: tuple[int, int], family: Family | None
              ) -> GenerationRequest:
    """The request as one cheap preview at ``strength``: for a diffusion model (``family``) at a working size of at
    most PREVIEW_SIDE pixels a side (its shorter side kept at MIN_SIDE or more) with half the steps."""
    preview = replace(request, strength=strength, num_images=1, **dict.fromkeys(KEEP_FIELDS))
    if family is None:  # the built-in engine: its full render is cheap
        return preview
    output, _ = plan_sizes(source_size, family.native_side, request.size, request.max_side)
    scale = min(1.0, max(PREVIEW_SIDE / max(output), MIN_SIDE / min(output)))
    size = tuple(max(MIN_SIDE, round(side * scale / LATENT_MULTIPLE) * LATENT_MULTIPLE) for side in output)
    steps = request.steps or family.default_steps
    return replace(preview, size=size, max_side=None, steps=steps if steps <= PREVIEW_STEPS else
                   max(PREVIEW_STEPS, steps // 2))
