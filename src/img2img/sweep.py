"""Sweeps: the same request over every combination of a few axes (A1111's X/Y plot), compared in one grid.

The first axis runs along the columns, the others along the rows (their values joined in each row's label).
Every cell is an ordinary request, so each image's record reproduces it alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

from PIL import Image

from img2img.engine.request import GenerationRequest
from img2img.engine.result import GenerationResult
from img2img.errors import InvalidArgument

MAX_SWEEP_CELLS = 100
# axis name -> the request field it varies
AXES: dict[str, str] = {
    "strength": "strength", "cfg": "guidance_scale", "seed": "seed", "steps": "steps", "sampler": "sampler",
    "prompt": "prompt", "negative": "negative_prompt", "control_weight": "control",  # the first unit's weight
    "cache_steps": "cache_steps", "merge_tokens": "merge_tokens", "image_cfg": "image_cfg",
}


@dataclass(frozen=True)
class Axis:
    """One swept field and its values, in the order they appear in the grid."""

    name: str  # a key of AXES
    values: tuple[object, ...]

    def label(self, value: object) -> str:
        if self.name in ("prompt", "negative", "sampler"):
            return str(value)
        if self.name == "steps":
            return f"{value} steps"
        if self.name == "merge_tokens":
            return "no merging" if value == 0 else f"merge {value:g}"
        if self.name == "image_cfg":
            return f"image CFG {value:g}"
        if self.name == "cache_steps":
            return "no step cache" if value == 1 else f"cache every {value}"
        return f"{self.name} {value:g}" if isinstance(value, float) else f"{self.name} {value}"


@dataclass(frozen=True)
class SweepResult:
    axes: tuple[Axis, ...]
    result: GenerationResult  # images and records in row-major order: columns vary fastest
    source: Image.Image

    @property
    def columns(self) -> int:
        return len(self.axes[0].values)

    def column_labels(self) -> list[str]:
        return [self.axes[0].label(value) for value in self.axes[0].values]

    def row_labels(self) -> list[str]:
        rows = itertools.product(*(axis.values for axis in self.axes[1:]))
        return [" · ".join(axis.label(v) for axis, v in zip(self.axes[1:], row, strict=True)) for row in rows]

    def rows(self) -> list[list[Image.Image]]:
        images = self.result.images
        return [images[start:start + self.columns] for start in range(0, len(images), self.columns)]


def make_axis(name: str, values: Sequence[object]) -> Axis:
    if name not in AXES:
        raise InvalidArgument("axis", f"one of {', '.join(AXES)}", name)
    if len(values) == 0:
        raise InvalidArgument(name, "a non-empty list of values", list(values))
    return Axis(name, tuple(values))


def sweep_cells(request: GenerationRequest, axes: Sequence[Axis]) -> list[GenerationRequest]:
    """Every combination of the axes' values applied to ``request``, row-major (the first axis fastest)."""
    if not axes:
        raise InvalidArgument("axes", "at least one axis with values", [])
    names = [axis.name for axis in axes]
    for axis in axes:
        make_axis(axis.name, axis.values)
        if names.count(axis.name) > 1:
            raise InvalidArgument("axes", "each axis at most once", names)
    count = 1
    for axis in axes:
        count *= len(axis.values)
    if count > MAX_SWEEP_CELLS:
        raise InvalidArgument("axes", f"at most {MAX_SWEEP_CELLS} combinations", count)
    if "control_weight" in names and not request.control:
        raise InvalidArgument("axes", "control_weight with a control unit to weigh", "no control unit")
    cells = []
    for row in itertools.product(*(axis.values for axis in axes[1:])):
        for column_value in axes[0].values:
            cell = request
            for axis, value in zip(axes, (column_value, *row), strict=True):
                cell = _with(cell, axis.name, value)
            cells.append(cell.validated())
    return cells


def _with(request: GenerationRequest, axis: str, value: object) -> GenerationRequest:
    """``request`` with ``axis`` set to ``value``."""
    if axis == "control_weight":
        first, *others = request.control
        return replace(request, control=(replace(first, weight=value), *others))  # type: ignore[arg-type]
    return replace(request, **{AXES[axis]: value})  # type: ignore[arg-type]
