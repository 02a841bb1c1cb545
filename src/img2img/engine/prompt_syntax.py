"""A1111's prompt syntax: attention weights, BREAK, and prompts of any length in chunks of 75 tokens.

- ``(words)`` multiplies the words' weight by 1.1, ``((words))`` by 1.21, ``[words]`` divides it by 1.1, and
  ``(words:1.3)`` sets it; ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the characters themselves.
- A closing bracket with no opening one is plain text; an opening bracket that is never closed weights the rest of
  the prompt (as A1111 does). Both get a warning.
- ``BREAK`` (in capitals, as a word) ends the current chunk: what follows starts a new one.
- Tokens go into chunks of 75; a chunk that would split in the middle of a phrase moves the words after its last
  comma to the next chunk when that comma is within the last 20 tokens. Each chunk is then padded and framed by the
  tokenizer's start and end tokens into CLIP's 77 (``img2img.engine.text`` encodes them one by one).

This module needs no model: it works on a tokenizer's ids, so that ``img2img prompt-check`` and the request's
checks are instant.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from img2img.errors import InvalidArgument

UP, DOWN = 1.1, 1 / 1.1  # ( ) and [ ]
MAX_WEIGHT = 3.0  # |(words:w)|; beyond this the picture is noise, and such values are typing mistakes
CHUNK_TOKENS = 75  # CLIP's 77 less its start and end tokens
COMMA_BACKTRACK = 20  # A1111's default "comma padding backtrack"
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra networks: <lora:name:weight>
MAX_LORAS = 10
MAX_LORA_WEIGHT = 5.0


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float


def extract_loras(text: str, name: str = "prompt") -> tuple[str, tuple[LoraTag, ...], tuple[str, ...]]:
    """The prompt without its extra-network tags (as A1111 encodes it), its LoRAs in order, and warnings.

    ``<lora:NAME>`` has weight 1 and ``<lora:NAME:W>`` weight W (``lyco`` is an alias); tags of other kinds
    (hypernetworks) are taken out with a warning. The same LoRA twice adds its weights, as A1111 does.
    """
    weights: dict[str, float] = {}
    warnings: list[str] = []
    for match in _NETWORK.finditer(text):
        kind, arguments = match[1], match[2].split(":")
        if kind not in ("lora", "lyco"):
            warnings.append(f"{name}: <{kind}:...> networks are not supported; {match[0]} was left out")
            continue
        lora = arguments[0].strip()
        weight = _number(arguments[1], name, match[0]) if len(arguments) > 1 and arguments[1].strip() else 1.0
        if not lora:
            raise InvalidArgument(name, "LoRA tags as <lora:NAME:WEIGHT>", match[0])
        if not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
            raise InvalidArgument(name, f"LoRA weights in [-{MAX_LORA_WEIGHT:g}, {MAX_LORA_WEIGHT:g}]", match[0])
        weights[lora] = weights.get(lora, 0.0) + weight
    if len(weights) > MAX_LORAS:
        raise InvalidArgument(name, f"at most {MAX_LORAS} LoRAs", f"{len(weights)} LoRAs")
    tags = tuple(LoraTag(lora, weight) for lora, weight in weights.items())
    return _NETWORK.sub("", text), tags, tuple(warnings)


@dataclass(frozen=True)
class Piece:
    text: str
    weight: float
    is_break: bool = False  # a BREAK between two pieces: the next chunk starts here


@dataclass(frozen=True)
class Parsed:
    pieces: tuple[Piece, ...]
    warnings: tuple[str, ...] = ()


@dataclass
class Chunk:
    """77 token ids (start, 75 tokens or padding, end) and their weights (1 for the frame and padding)."""

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    tokens: int = 0  # how many of the 75 are the prompt's (the rest is padding)

    @property
    def weighted(self) -> bool:
        return any(weight != 1.0 for weight in self.weights)


def parse(text: str, name: str = "prompt") -> Parsed:
    """The prompt as pieces of text with their weights, in order, with runs of equal weight merged."""
    pieces: list[list[Any]] = []  # [text, weight, is_break]
    rounds: list[int] = []  # where each open ( and [ began, as indices into pieces
    squares: list[int] = []
    opened_at: list[int] = []  # where each open ( began in the text, for messages
    warnings: list[str] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKEN.finditer(text):
        token, weight = match[0], match[1]
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0, False])
        elif token == "(":
            rounds.append(len(pieces))
            opened_at.append(match.start())
        elif token == "[":
            squares.append(len(pieces))
        elif weight is not None and rounds:
            scale(rounds.pop(), _weight(weight, name, text[opened_at.pop():match.end()]))
        elif token == ")" and rounds:
            scale(rounds.pop(), UP)
            opened_at.pop()
        elif token == "]" and squares:
            scale(squares.pop(), DOWN)
        else:
            if token in (")", "]") or (weight is not None):
                warnings.append(f"{name} has an unmatched {token.strip()[-1]!r} at character {match.start() + 1}; "
                                "it is read as text")
            for index, part in enumerate(_BREAK.split(token)):
                if index:
                    pieces.append(["", 1.0, True])
                pieces.append([part, 1.0, False])
    for kind, opened in (("(", rounds), ("[", squares)):
        for start in opened:
            scale(start, UP if kind == "(" else DOWN)
        if opened:
            warnings.append(f"{name} has {len(opened)} unclosed {kind!r}; as in A1111 it weights the rest of the "
                            "prompt")
    merged: list[Piece] = []
    for text_, weight, is_break in pieces:
        if is_break:
            merged.append(Piece("", 1.0, True))
        elif not text_:
            continue  # nothing to tokenize
        elif merged and not merged[-1].is_break and merged[-1].weight == weight:
            merged[-1] = Piece(merged[-1].text + text_, weight)
        else:
            merged.append(Piece(text_, weight))
    return Parsed(tuple(merged) or (Piece("", 1.0),), tuple(warnings))


def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, without start and end tokens, however long (no warning about CLIP's 77)."""
    return tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)["input_ids"] if texts else []


def plain(tokenizer: Any, text: str) -> tuple[Chunk, list[int]]:
    """The text as diffusers reads it, with no syntax: one chunk of its first 75 tokens, and the tokens cut off."""
    ids = tokenize(tokenizer, [text])[0]
    kept = ids[:CHUNK_TOKENS]
    padding = CHUNK_TOKENS - len(kept)
    end = tokenizer.eos_token_id
    chunk = Chunk([tokenizer.bos_token_id, *kept, *[end] * padding, end], [1.0] * (CHUNK_TOKENS + 2), len(kept))
    return chunk, ids[CHUNK_TOKENS:]


def chunks(tokenizer: Any, parsed: Parsed, expand: Callable[[str], str] | None = None) -> list[Chunk]:
    """The prompt's tokens in chunks of 77, as A1111 makes them (any number of chunks, at least one).

    ``expand`` rewrites each piece's text before it is tokenized (an embedding's name as its vectors' tokens).
    """
    texts = [piece.text for piece in parsed.pieces]
    tokenized = tokenize(tokenizer, [expand(text) for text in texts] if expand else texts)
    comma = tokenizer.get_vocab().get(",</w>")
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    done: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        count = len(ids)
        padding = CHUNK_TOKENS - count
        done.append(Chunk([start, *ids, *[end] * padding, end], [1.0, *weights, *[1.0] * padding, 1.0], count))
        ids, weights, last_comma = [], [], -1

    for piece, tokens in zip(parsed.pieces, tokenized, strict=True):
        if piece.is_break:
            close()
            continue
        for token in tokens:
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == CHUNK_TOKENS and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1  # the words after the comma move to the next chunk
                moved, moved_weights = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                close()
                ids, weights = moved, moved_weights
            if len(ids) == CHUNK_TOKENS:
                close()
            ids.append(token)
            weights.append(piece.weight)
    if ids or not done:
        close()
    return done


def _number(text: str, name: str, where: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise InvalidArgument(name, "weights as numbers such as (word:1.2) or <lora:NAME:0.8>", where) from exc


def _weight(text: str, name: str, where: str) -> float:
    value = _number(text, name, where)
    if not -MAX_WEIGHT <= value <= MAX_WEIGHT:
        raise InvalidArgument(name, f"attention weights in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}] such as (word:1.2)",
                              where)
    return value
