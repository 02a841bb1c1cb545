"""Text encoders' weights in a file mapping, resident only while they encode.

A text encoder runs once per prompt, then sits idle through the denoising loop and the decoding, where a run's
peak memory is (SD 1.5 in float32: 0.49 GB of 5.5 GB; SDXL's two encoders in bfloat16: 0.8 GB). At load on the
CPU, ``map_weights`` writes a module's parameters and buffers to an unlinked file in the cache folder and maps them
back copy-on-write, the same values in the same dtypes; ``release`` gives their pages back after each encoding,
and the next encoding reads them back from the page cache. Nothing else changes: the modules keep their tensors'
shapes, LoRA adapters and textual inversion work on them as before.

A page that something wrote holds the only copy of its new values, so a mapping with any written page is never
released. Linux only; elsewhere the weights stay where they were loaded.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from img2img.models import pagecache

ALIGN = 64  # bytes: each tensor starts on a cache line
PIPELINE_KEY = "img2img_mapped_weights"  # in a pipeline's __dict__: its MappedWeights


class MappedWeights:
    """One module's tensors moved into one private file mapping (see the module's docstring)."""

    def __init__(self, module: torch.nn.Module, folder: Path) -> None:
        slots = [(owner, kind, name, tensor, _identity(tensor)) for owner in module.modules()
                 for kind in ("_parameters", "_buffers") for name, tensor in getattr(owner, kind).items()
                 if tensor is not None and tensor.device.type == "cpu" and tensor.numel() > 0]
        offsets: dict[tuple[Any, ...], int] = {}
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=folder, prefix=".weights-")
        Path(name).unlink()  # the file lives as long as the mapping, and no longer
        with os.fdopen(descriptor, "w+b") as file:
            size = 0
            for *_, tensor, key in slots:
                if key not in offsets:  # tied weights are written once and stay tied
                    offsets[key] = size = -(-size // ALIGN) * ALIGN
                    file.seek(size)
                    file.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
                    size += tensor.numel() * tensor.element_size()
            file.truncate(max(size, 1))
            file.flush()
            self._map = mmap.mmap(file.fileno(), max(size, 1), flags=mmap.MAP_PRIVATE,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.size = size
        self._address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        mapped: dict[tuple[Any, ...], torch.Tensor] = {}
        for owner, kind, name, tensor, key in slots:
            if key not in mapped:
                flat = torch.frombuffer(self._map, dtype=tensor.dtype, count=tensor.numel(), offset=offsets[key])
                mapped[key] = flat.view(tensor.shape)
            if kind == "_parameters":
                tensor.data = mapped[key]
            else:
                owner._buffers[name] = mapped[key]

    def release(self) -> bool:
        """Give the mapping's resident pages back, unless one was written; whether they were given back."""
        if _written_kb(self._address) != 0:
            return False
        return pagecache.advise_dont_need(self._address, self.size)


def map_weights(pipeline: Any, folder: Path) -> None:
    """Map the tensors of ``pipeline``'s text encoders (on the CPU, on Linux); ``release`` gives them back."""
    if not sys.platform.startswith("linux"):
        return
    mapped = []
    for part in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        encoder = getattr(pipeline, part, None)
        if isinstance(encoder, torch.nn.Module):
            try:
                mapped.append(MappedWeights(encoder, folder))
            except OSError:  # no room or no write access in the cache folder: the weights stay where they are
                continue
    pipeline.__dict__[PIPELINE_KEY] = mapped


def release(pipeline: Any) -> None:
    """After encoding: the mapped text encoders' pages back to the system (read again on their next use)."""
    for weights in pipeline.__dict__.get(PIPELINE_KEY, ()):
        weights.release()


def _identity(tensor: torch.Tensor) -> tuple[Any, ...]:
    return tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride())


def _written_kb(address: int) -> int | None:
    """Kilobytes of the mapping at ``address`` that hold written (anonymous) pages; None if it is not found."""
    start = f"{address:x}-"
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    for index, line in enumerate(lines):
        if line.startswith(start):
            for field in lines[index + 1:]:
                if field.startswith("Anonymous:"):
                    return int(field.split()[1])
            return None
    return None
