"""Seeds: one definition of what a seed is and how a batch spreads over seeds (A1111's convention)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MAX_SEED = 2**32 - 1  # A1111's range; seeds outside it would not round-trip through its clients


def resolve_seed(seed: int | None) -> int:
    """Return ``seed``, or a fresh random one when it is None or -1."""
    if seed is None or seed == -1:
        return secrets.randbelow(MAX_SEED + 1)
    return seed


def batch_seeds(first_seed: int, count: int) -> list[int]:
    """Image k of a batch uses first_seed + k, so any image can be reproduced alone."""
    return [first_seed + k for k in range(count)]


def cpu_generator(seed: int) -> torch.Generator:
    """Noise is always drawn on the CPU so that a seed means the same picture on every device."""
    import torch

    return torch.Generator(device="cpu").manual_seed(seed)
