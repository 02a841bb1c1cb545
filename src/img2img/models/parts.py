"""Model parts that conditioners bring to a run (ControlNets, adapters, image encoders): loaded once and shared.

A part is keyed by its kind, its weights' SHA-256 and where it runs, so the same weights under two paths load
once, and a part in another dtype is another entry. A part is never attached to a cached pipeline: conditioners
hand it to the denoising loop as inputs, so a pipeline that another request uses never changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from img2img.models.loading import weights_sha256

if TYPE_CHECKING:
    from img2img.models.device import Placement

Loader = Callable[[Path, "Placement"], Any]  # (weights folder or file, placement) -> the loaded part


@dataclass(frozen=True)
class PartKey:
    kind: str  # "controlnet", "t2i-adapter", "image-encoder", ...
    sha256: str  # of the weights (``weights_sha256``: cached by path, size and modification time)
    device: str
    dtype: str


class PartCache:
    """The most recently used parts, ``capacity`` of them; an Engine keeps one for the conditioners of its runs."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._parts: OrderedDict[PartKey, Any] = OrderedDict()

    def get(self, kind: str, path: Path, placement: Placement, load: Loader) -> Any:
        """The part at ``path``, loaded with ``load`` the first time its weights are asked for at ``placement``."""
        key = PartKey(kind, weights_sha256(path), placement.device, placement.dtype_name)
        if key in self._parts:
            self._parts.move_to_end(key)
            return self._parts[key]
        while len(self._parts) >= self.capacity:
            self._parts.popitem(last=False)  # free the oldest before loading, so peak memory holds one part less
        part = load(path, placement)
        if hasattr(part, "requires_grad_"):
            part.requires_grad_(False)
            part.eval()
        self._parts[key] = part
        return part

    def loaded(self) -> list[PartKey]:
        """What is loaded, oldest first."""
        return list(self._parts)

    def newest(self) -> Any:
        """The part loaded or used last (None when there is none)."""
        return next(reversed(self._parts.values()), None)

    def clear(self) -> None:
        self._parts.clear()

