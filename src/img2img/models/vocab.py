"""CLIP tokenizer files made from the BPE vocabulary that the ``open_clip_torch`` wheel ships.

Single-file checkpoints carry no tokenizer. Every Stable Diffusion text encoder (CLIP ViT-L, OpenCLIP ViT-H and
bigG) reads the same 49,408-token byte-pair vocabulary; only the padding token differs, and that lives in each
shipped ``tokenizer_config.json``. We rebuild ``vocab.json`` and ``merges.txt`` from open_clip's merge list.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

from img2img.errors import ModelError

VOCAB_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes, their end-of-word forms, merges, two specials


def find_bpe_vocabulary() -> Path:
    """The open_clip merge list, or ``$IMG2IMG_CLIP_VOCAB`` when set."""
    override = os.environ.get("IMG2IMG_CLIP_VOCAB")
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = Path(locations[0]) / VOCAB_FILE_NAME if locations else Path(VOCAB_FILE_NAME)
    if not path.is_file():
        raise ModelError(
            f"CLIP vocabulary should be at {path}, but it is missing: install it with "
            "'pip install --no-deps open_clip_torch' or set IMG2IMG_CLIP_VOCAB to a bpe_simple_vocab_16e6.txt.gz"
        )
    return path


def _byte_alphabet() -> list[str]:
    """GPT-2's reversible byte-to-character map, in byte order (printable bytes stand for themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = 0
    alphabet = []
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    # Printable bytes come first in CLIP's vocabulary order, the remapped ones after.
    return [chr(b) for b in printable] + [c for b, c in enumerate(alphabet) if b not in printable]


def write_tokenizer_files(folder: Path, bpe_path: Path | None = None) -> None:
    """Write ``vocab.json`` and ``merges.txt`` for a CLIP tokenizer into ``folder`` (created if needed)."""
    bpe_path = bpe_path or find_bpe_vocabulary()
    lines = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : MERGE_COUNT + 1]  # the first line is a version header
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab = json.dumps({token: index for index, token in enumerate(tokens)}, ensure_ascii=False)
    (folder / "vocab.json").write_text(vocab, encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
