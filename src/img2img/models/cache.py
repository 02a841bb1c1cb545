"""Resolving a model reference and keeping loaded models for reuse across calls."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from img2img.errors import ModelNotFound
from img2img.models.detect import REPO_ID, ModelFiles, find_hf_cache_snapshot, inspect_model
from img2img.models.device import Placement
from img2img.models.loading import LoadedModel, load_model
from img2img.models.registry import ModelEntry, ModelRegistry


def resolve_reference(reference: str | None, registry: ModelRegistry, allow_pickle: bool = False) -> ModelEntry:
    """A registry name, a path or a cached Hugging Face repo id, as a registry entry (not yet inspected).

    None means the registry's default model.
    """
    if reference is None:
        default = registry.default_name()
        if default is None:
            raise ModelNotFound(
                "model should be given (--model NAME|PATH) or set as default with 'img2img models add NAME PATH', "
                "but none is configured"
            )
        reference = default
    entry = registry.get(reference)
    if entry is not None:
        return entry
    path = Path(reference).expanduser()
    if path.exists():
        return ModelEntry(name=path.stem, path=str(path.resolve()), allow_pickle=allow_pickle)
    if REPO_ID.match(reference):
        snapshot = find_hf_cache_snapshot(reference)
        if snapshot is None:
            raise ModelNotFound(
                f"model {reference!r} should be a registry name, an existing path or a repo id in the local "
                "Hugging Face cache, but it is none of these (nothing is downloaded)"
            )
        return ModelEntry(name=reference, path=str(snapshot), allow_pickle=allow_pickle)
    known = ", ".join(e.name for e in registry.entries()) or "none registered"
    raise ModelNotFound(f"model should be a registry name ({known}) or an existing path, but got {reference!r}")


class ModelCache:
    """Keeps the most recently used models loaded (``capacity`` of them), keyed by files and placement."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self._loaded: OrderedDict[tuple, LoadedModel] = OrderedDict()

    def get(self, entry: ModelEntry, placement: Placement) -> LoadedModel:
        files: ModelFiles = inspect_model(
            Path(entry.path), name=entry.name, allow_pickle=entry.allow_pickle, prediction=entry.prediction
        )
        key = (str(files.path), files.family, entry.config, entry.t5, placement)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        while len(self._loaded) >= self.capacity:
            self._loaded.popitem(last=False)  # free the oldest before loading, so peak memory holds one model
        model = load_model(files, placement, Path(entry.config) if entry.config else None, entry.t5)
        self._loaded[key] = model
        return model

    def clear(self) -> None:
        self._loaded.clear()
