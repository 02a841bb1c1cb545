"""Device and precision policy: the one place that decides where a model runs and in which dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from img2img.errors import InvalidArgument

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu", "cuda", "cuda:1", "mps"
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """CUDA in fp16 when present, else Apple MPS in fp16, else the CPU in fp32; ``device``/``dtype`` override.

    fp16 is never chosen on the CPU by default: CPU matrix multiplies in fp16 are orders of magnitude slower.
    """
    if device.split(":")[0] not in DEVICES:
        raise InvalidArgument("device", f"one of {', '.join(DEVICES)} (optionally cuda:N)", device)
    if dtype not in DTYPES:
        raise InvalidArgument("dtype", f"one of {', '.join(DTYPES)}", dtype)
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgument("device", "a device present on this machine (no CUDA GPU was found)", device)
    elif device == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgument("device", "a device present on this machine (Apple MPS is not available)", device)
    chosen = DTYPES[dtype]
    if chosen is None:
        chosen = torch.float32 if device == "cpu" else torch.float16
    return Placement(device=device, dtype=chosen)
