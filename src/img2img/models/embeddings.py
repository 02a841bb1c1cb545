"""Textual-inversion embeddings, used by name in the prompt as A1111 uses them.

Every embedding in the registry and the embedding folders (``img2img.models.addons``) is available: a prompt that
contains its name as a word uses it. An embedding is loaded into a pipeline the first time a prompt names it
(diffusers' ``load_textual_inversion``, under a token of its own, ``<ti:NAME>``, so that a name that is also an
English word, such as "mood", still works; further vectors get ``<ti:NAME>_1``...); before a prompt is tokenized
each name in it is spelled as those tokens (``spell``). SDXL embeddings
hold a part for each text encoder (``clip_l`` and ``clip_g``). Files in A1111's format (``emb_params`` or
``string_to_param``) and diffusers' (one tensor named by its token) are read; only ``.safetensors``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from img2img.errors import InvalidArgument, ModelError
from img2img.models import addons


@dataclass(frozen=True)
class EmbeddingUse:
    name: str
    path: Path
    sha256: str

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256}


def mentions(name: str, texts: list[str]) -> bool:
    """Whether ``name`` appears as a word in one of ``texts`` (case-insensitive, as CLIP reads)."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])")
    return any(pattern.search(text.lower()) for text in texts)


def named_in(texts: list[str], registered: dict[str, str]) -> dict[str, Path]:
    """The available embeddings whose names appear as words in ``texts`` (files in an embedding folder that are
    not embeddings are passed over, as A1111 skips them)."""
    known = {path.stem: path for path in addons.available("embedding")} | {
        name: Path(path) for name, path in registered.items()}
    named = {name: path for name, path in known.items() if mentions(name, texts)}
    return {name: path for name, path in named.items()
            if name in registered or getattr(addons.detect(path), "kind", None) == "embedding"}


def rename(text: str, old: str, new: str) -> str:
    """``text`` with the word ``old`` (any case) replaced by ``new``."""
    return re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", new, text, flags=re.IGNORECASE)


def resolve(found: dict[str, Path], text_width: int, xl: bool) -> tuple[EmbeddingUse, ...]:
    """Check that each embedding is one for this model's text encoder, and name it by hash."""
    from img2img.models.loading import weights_sha256

    uses = []
    for name, path in sorted(found.items()):
        info = addons.detect(path)
        if info is None or info.kind != "embedding":
            raise InvalidArgument("prompt", "embedding names that are embedding files", f"{name} ({path.name})")
        if info.xl != xl or (not xl and info.width != text_width):
            model = "SDXL" if xl else addons.BASES.get(text_width, f"a model {text_width} wide")
            raise InvalidArgument("prompt", f"embeddings for {model}, the model in use", f"{name} (for {info.base})")
        uses.append(EmbeddingUse(name, path, weights_sha256(path)))
    return tuple(uses)


def load(pipeline: Any, uses: tuple[EmbeddingUse, ...]) -> None:
    """Load into ``pipeline`` each embedding it does not hold yet (its tokens then stay in its tokenizer)."""
    from safetensors.torch import load_file

    held = pipeline.__dict__.setdefault("img2img_embeddings", {})
    for use in uses:
        if held.get(use.name) == use.sha256:
            continue
        if use.name in held:
            raise ModelError(f"embedding {use.name} changed on disk since this model loaded it; restart to use "
                             "the new file")
        tensors = load_file(str(use.path))
        token = _token(use.name)
        try:
            if "clip_l" in tensors:  # SDXL: one part for each text encoder
                pipeline.load_textual_inversion(tensors["clip_l"], token=token, text_encoder=pipeline.text_encoder,
                                                tokenizer=pipeline.tokenizer)
                pipeline.load_textual_inversion(tensors["clip_g"], token=token, text_encoder=pipeline.text_encoder_2,
                                                tokenizer=pipeline.tokenizer_2)
            else:
                pipeline.load_textual_inversion(tensors, token=token)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"embedding {use.name} ({use.path.name}) could not be loaded: "
                             f"{str(exc).splitlines()[0]}") from exc
        held[use.name] = use.sha256


def spell(pipeline: Any, tokenizer: Any, text: str) -> str:
    """``text`` with each embedding ``pipeline`` holds spelled as its tokens, one per vector."""
    for name in pipeline.__dict__.get("img2img_embeddings", {}):
        text = rename(text, name, _token(name))
    return pipeline.maybe_convert_prompt(text, tokenizer)


def _token(name: str) -> str:
    return f"<ti:{name}>"
