"""Models that read pictures into words, brought by the user: a captioner and, optionally, a CLIP model to rank
words against the picture (the CLIP-interrogator way).

- A captioner is a transformers folder of BLIP (``BlipForConditionalGeneration``), BLIP-2, GIT or Florence-2,
  with its processor; it writes one sentence for the picture.
- A CLIP model (``CLIPModel`` with its processor) ranks terms from word lists by how well each matches the picture:
  the best mediums, movements, artists and flavours. The lists are the ones the ``clip-interrogator`` package ships
  (MIT licence), read as data from its installed wheel without importing it; each list's text embeddings are
  computed once per CLIP model and kept on disk, so only the first ranking pays for them.

Both load offline (``local_files_only``) and from ``.safetensors`` only. Registered with ``img2img models add``
(kinds ``captioner`` and ``clip``) or given by path on the command line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from img2img.errors import InvalidArgument, ModelError

if TYPE_CHECKING:
    from PIL import Image

    from img2img.models.device import Placement

CAPTIONERS = {"blip": "BlipForConditionalGeneration", "blip-2": "Blip2ForConditionalGeneration",
              "git": "GitForCausalLM", "florence2": "Florence2ForConditionalGeneration"}
LABELS = {"blip": "BLIP", "blip-2": "BLIP-2", "git": "GIT", "florence2": "Florence-2", "clip": "CLIP"}
FLORENCE_TASK = "<CAPTION>"
MAX_CAPTION_TOKENS = 40
# The word lists that are ranked, with how many of each the prompt takes; flavours are many (100,000 in
# clip-interrogator's list): the first LIST_LIMIT of each list are read ($IMG2IMG_CLIP_TERMS sets another number),
# so that a first ranking on a CPU stays within minutes.
LISTS = {"mediums": 1, "movements": 1, "artists": 1, "flavors": 3}
LIST_LIMIT = 4000
LIMIT_ENV = "IMG2IMG_CLIP_TERMS"
TEXT_BATCH = 128


def model_type(folder: Path) -> str | None:
    """The ``model_type`` of a transformers folder's config, or None when it has none."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


def kind_of(folder: Path) -> str | None:
    """"captioner", "clip" or None for a folder."""
    found = model_type(folder)
    if found in CAPTIONERS:
        return "captioner"
    return "clip" if found == "clip" else None


def check_folder(folder: Path, kind: str, argument: str) -> Path:
    """``folder`` when it holds a model of ``kind``; else one clear error saying what it is."""
    if not folder.is_dir():
        raise InvalidArgument(argument, f"a {_wanted(kind)} folder", f"{folder} (not a folder)")
    if kind_of(folder) != kind:
        found = model_type(folder)
        raise InvalidArgument(argument, f"a {_wanted(kind)} folder that transformers loads offline",
                              f"{folder} ({f'a {found} model' if found else 'no config.json with a model_type'})")
    return folder


def _wanted(kind: str) -> str:
    return "BLIP, BLIP-2, GIT or Florence-2" if kind == "captioner" else "CLIP"


@dataclass(eq=False)
class Captioner:
    model: Any
    processor: Any
    kind: str  # the model_type

    def caption(self, picture: Image.Image) -> str:
        """One sentence for ``picture``, by greedy decoding (the same words every time)."""
        import torch

        prompt = {"text": FLORENCE_TASK} if self.kind == "florence2" else {}
        inputs = self.processor(images=picture.convert("RGB"), return_tensors="pt", **prompt)
        inputs = {key: value.to(self.model.device, self.model.dtype) if value.is_floating_point() else
                  value.to(self.model.device) for key, value in inputs.items()}
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=MAX_CAPTION_TOKENS, do_sample=False, num_beams=1)
        if self.kind == "florence2" and "input_ids" in inputs:
            ids = ids[:, inputs["input_ids"].shape[1]:] if ids.shape[1] > inputs["input_ids"].shape[1] else ids
        text = self.processor.batch_decode(ids, skip_special_tokens=True)[0]
        return " ".join(text.replace(FLORENCE_TASK, "").split())


def load_captioner(folder: Path, placement: Placement) -> Captioner:
    import transformers

    kind = model_type(folder) or ""
    model_class = getattr(transformers, CAPTIONERS[kind], None)
    if model_class is None:
        raise ModelError(f"this transformers has no {CAPTIONERS[kind]}, which {folder.name} needs")
    try:
        model = model_class.from_pretrained(folder, dtype=placement.dtype, local_files_only=True,
                                            use_safetensors=True).to(placement.device).eval()
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder.name} should be a {LABELS[kind]} folder with .safetensors weights and its "
                         f"processor ({str(exc).splitlines()[0][:160]})") from exc
    return Captioner(model, processor, kind)


@dataclass(eq=False)
class Ranker:
    """A CLIP model and the text embeddings of the word lists (kept on disk per model)."""

    model: Any
    processor: Any
    folder: Path

    def rank(self, picture: Image.Image, caption: str = "") -> dict[str, list[tuple[str, float]]]:
        """The best terms of each list for ``picture`` with their cosine similarity, best first."""
        import torch

        with torch.inference_mode():
            pixels = self.processor(images=picture.convert("RGB"), return_tensors="pt").pixel_values
            image = self.model.get_image_features(pixel_values=pixels.to(self.model.dtype))
            image = torch.nn.functional.normalize(_features(image).float(), dim=-1)[0]
        ranked = {}
        for name, count in LISTS.items():
            terms = word_list(name)
            if not terms:
                continue
            scores = self.embeddings(name, terms) @ image.numpy()
            best = scores.argsort()[::-1][:count]
            ranked[name] = [(terms[index], round(float(scores[index]), 4)) for index in best]
        return ranked

    def embeddings(self, name: str, terms: list[str]) -> Any:
        """The normalised text embeddings of ``terms`` (the list ``name``), computed once per model and list."""
        import numpy as np
        import torch

        from img2img.models.loading import weights_sha256
        from img2img.models.paths import cache_dir

        digest = hashlib.sha256("\n".join(terms).encode()).hexdigest()[:12]
        weights = next(iter(sorted(self.folder.glob("*.safetensors"))), None)
        model_id = weights_sha256(weights)[:16] if weights else hashlib.sha256(str(self.folder).encode()).hexdigest()
        path = cache_dir() / "clip-lists" / f"{model_id}-{name}-{digest}.npy"
        if path.is_file():
            return np.load(path)
        rows = []
        with torch.inference_mode():
            for start in range(0, len(terms), TEXT_BATCH):
                tokens = self.processor(text=terms[start:start + TEXT_BATCH], return_tensors="pt", padding=True,
                                        truncation=True)
                features = self.model.get_text_features(input_ids=tokens.input_ids,
                                                        attention_mask=tokens.attention_mask)
                rows.append(torch.nn.functional.normalize(_features(features).float(), dim=-1).numpy())
        table = np.concatenate(rows).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}")
        with staging.open("wb") as handle:
            np.save(handle, table)
        staging.replace(path)  # whole or absent
        return table


def _features(value: Any) -> Any:
    """A features tensor from ``get_image_features``/``get_text_features`` (newer transformers return an output
    object holding it)."""
    return getattr(value, "pooler_output", value) if not hasattr(value, "shape") else value


def load_ranker(folder: Path, placement: Placement) -> Ranker:
    import transformers

    try:
        model = transformers.CLIPModel.from_pretrained(folder, dtype=placement.dtype, local_files_only=True,
                                                       use_safetensors=True).eval()
        processor = transformers.CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder.name} should be a CLIP folder with .safetensors weights and its processor "
                         f"({str(exc).splitlines()[0][:160]})") from exc
    return Ranker(model, processor, folder)


def lists_folder() -> Path | None:
    """clip-interrogator's data folder, found without importing the package (it imports open_clip and torch)."""
    spec = importlib.util.find_spec("clip_interrogator")
    locations = list(spec.submodule_search_locations or []) if spec else []
    folder = Path(locations[0]) / "data" if locations else None
    return folder if folder is not None and folder.is_dir() else None


def word_list(name: str) -> list[str]:
    """The first LIST_LIMIT (or $IMG2IMG_CLIP_TERMS) terms of clip-interrogator's list ``name`` (empty when the
    package is absent)."""
    folder = lists_folder()
    path = folder / f"{name}.txt" if folder else None
    if path is None or not path.is_file():
        return []
    terms = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    limit = os.environ.get(LIMIT_ENV, "")
    return [term for term in terms if term][:int(limit) if limit.isdigit() else LIST_LIMIT]
