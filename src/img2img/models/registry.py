"""The user's model registry: short names for model paths, and which one is the default.

Stored as ``models.json`` in the user's config directory (``$IMG2IMG_CONFIG_DIR`` overrides it).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from img2img.errors import InvalidArgument, ModelError, ModelNotFound
from img2img.models.detect import inspect_model
from img2img.models.families import Family, Prediction
from img2img.models.paths import config_dir

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: str
    config: str | None = None  # a diffusers-format config folder for a non-standard single file
    allow_pickle: bool = False
    prediction: Prediction | None = None
    t5: bool = True  # False: an SD 3.x model runs without its T5 encoder (about 9.5 GB less in 16 bits)


class ModelRegistry:
    """Reads and writes ``models.json``; every write replaces the file atomically."""

    def __init__(self, folder: Path | None = None) -> None:
        self.file = (folder or config_dir()) / "models.json"

    def entries(self) -> list[ModelEntry]:
        return [ModelEntry(**entry) for entry in self._load()["models"].values()]

    def default_name(self) -> str | None:
        return self._load().get("default")

    def get(self, name: str) -> ModelEntry | None:
        entry = self._load()["models"].get(name)
        return ModelEntry(**entry) if entry else None

    def add(self, entry: ModelEntry) -> Family:
        """Register ``entry`` after checking that its path is a model we can run; returns its family.

        The first model added becomes the default.
        """
        if not NAME_PATTERN.match(entry.name):
            raise InvalidArgument("name", "letters, digits, '.', '_' or '-' (at most 64)", entry.name)
        path = Path(entry.path).expanduser().resolve()
        if entry.config is not None and not (Path(entry.config) / "model_index.json").is_file():
            raise ModelNotFound(f"config should be a folder with a model_index.json, but got {entry.config}")
        files = inspect_model(path, name=entry.name, allow_pickle=entry.allow_pickle, prediction=entry.prediction)
        if not entry.t5 and files.family.base != "sd3":
            raise InvalidArgument("t5", f"left on for {files.family.label} models (only SD 3.x has a T5 encoder)",
                                  "off")
        if files.layout == "single_file" and files.family.flow:  # what the file lacks must be in --config
            from img2img.models.detect import file_shapes
            from img2img.models.flow_files import check_parts, sd3_has_t5

            shapes, folder = file_shapes(path), Path(entry.config) if entry.config else None
            check_parts(files, shapes, folder)
            if files.family.base == "sd3" and not sd3_has_t5(shapes, folder):
                entry = replace(entry, t5=False)  # recorded, so that listings say it runs without T5
        data = self._load()
        config = str(Path(entry.config).resolve()) if entry.config else None
        data["models"][entry.name] = asdict(
            ModelEntry(entry.name, str(path), config, entry.allow_pickle, entry.prediction, entry.t5)
        )
        data.setdefault("default", None)
        if data["default"] is None:
            data["default"] = entry.name
        self._save(data)
        return files.family

    def add_addon(self, name: str, path: Path, kind: str) -> None:
        """Register a LoRA or an embedding (``img2img.models.addons``) under ``name``."""
        if not NAME_PATTERN.match(name):
            raise InvalidArgument("name", "letters, digits, '.', '_' or '-' (at most 64)", name)
        data = self._load()
        data.setdefault("addons", {})[name] = {"kind": kind, "path": str(path.expanduser().resolve())}
        self._save(data)

    def addons(self, kind: str) -> dict[str, str]:
        """The registered add-ons of ``kind``: name to path."""
        return {name: entry["path"] for name, entry in self._load().get("addons", {}).items()
                if entry.get("kind") == kind}

    def remove(self, name: str) -> None:
        data = self._load()
        if data.get("addons", {}).pop(name, None) is not None:
            self._save(data)
            return
        if data["models"].pop(name, None) is None:
            raise ModelNotFound(f"model name should be one of {self._names(data)}, but got {name!r}")
        if data.get("default") == name:
            data["default"] = None
        self._save(data)

    def set_default(self, name: str) -> None:
        data = self._load()
        if name not in data["models"]:
            raise ModelNotFound(f"model name should be one of {self._names(data)}, but got {name!r}")
        data["default"] = name
        self._save(data)

    @staticmethod
    def _names(data: dict) -> str:
        return ", ".join(sorted(data["models"])) or "(none registered: use 'img2img models add NAME PATH')"

    def _load(self) -> dict:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"default": None, "models": {}}
        except (OSError, ValueError) as exc:
            raise ModelError(f"model registry {self.file} should be valid JSON, but: {exc}") from exc
        data.setdefault("models", {})
        return data

    def _save(self, data: dict) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.file.parent, prefix=".models-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=2)
            Path(temporary).replace(self.file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
