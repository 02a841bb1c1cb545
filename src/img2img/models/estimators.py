"""Models that make control maps: depth estimators (DPT, Depth Anything, GLPN, ZoeDepth) from a transformers
folder the user brings, recognised from its files and run offline.

A folder holds a ``config.json`` of one of those model types and a ``preprocessor_config.json``; register it with
``img2img models add NAME FOLDER``. The ``depth`` preprocessor uses the registered depth model named ``depth``,
else the first by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from img2img.errors import InvalidArgument, ModelError

DEPTH_TYPES = ("depth_anything", "dpt", "glpn", "zoedepth", "depth_pro", "prompt_depth_anything")


def is_depth_folder(path: Path) -> bool:
    """Whether ``path`` is a transformers depth-estimation folder (config and image-processor config)."""
    config = path / "config.json"
    if not path.is_dir() or not config.is_file() or not (path / "preprocessor_config.json").is_file():
        return False
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return model_type in DEPTH_TYPES


def find_depth(registered: dict[str, str]) -> Path:
    """The depth model the ``depth`` preprocessor uses (InvalidArgument saying how to add one when none is)."""
    if not registered:
        raise InvalidArgument("preprocessor", "depth with a depth model registered ('img2img models add NAME FOLDER' "
                              "with a DPT or Depth Anything folder)", "depth")
    return Path(registered.get("depth") or registered[sorted(registered)[0]])


class DepthEstimator:
    """A depth model and its image processor: a picture in, its depth map out (near is white), at its size."""

    def __init__(self, path: Path, device: str) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        try:
            self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModelForDepthEstimation.from_pretrained(str(path), local_files_only=True).to(device)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"depth model {path} could not be loaded: {(str(exc).splitlines() or [''])[0]}") from exc
        self.model.eval()
        self.device = device

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        import torch
        from PIL import Image

        inputs = self.processor(images=Image.fromarray(pixels), return_tensors="pt").to(self.device)
        with torch.no_grad():
            depth = self.model(**inputs).predicted_depth  # (1, h, w): larger is nearer (inverse depth)
        depth = torch.nn.functional.interpolate(depth[:, None].float(), size=pixels.shape[:2], mode="bicubic",
                                                align_corners=False)[0, 0].cpu().numpy()
        low, high = float(depth.min()), float(depth.max())
        scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
        grey = (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)


def load_depth(path: Path, placement: Any) -> DepthEstimator:
    """A part-cache loader (``img2img.models.parts``): the estimator in float32 on the placement's device."""
    return DepthEstimator(path, placement.device)
