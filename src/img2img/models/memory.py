"""Peak memory of a request, estimated before it runs, and the budget it must fit.

A request that would need more memory than the machine has should be refused in one line, not end with the
machine swapping or the process killed. The estimate is rough on purpose: resident weights plus working
buffers that grow with the working size's pixel count, with constants from measured peaks on our CPUs
(bench/README.md):

- SD 1.5, 512x512, OpenVINO bf16: 3.3 GB; the same at a 2048x2048 working size: 8.7 GB; SDXL at 1024x1024:
  10.2 GB. That is about 1.4 KB per working pixel beyond the weights in a 16-bit dtype, twice that in float32.
- The built-in style engine: 1.0 GB at 1 MP and 3.3 GB at 4 MP (named styles; style images need less), about
  0.8 KB per working pixel beyond a quarter gigabyte.

The budget is ``IMG2IMG_MAX_MEMORY`` (bytes, or with a unit: ``12GB``, ``800MB``) or, by default, 90% of the
machine's physical memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from img2img.errors import InvalidArgument

MEMORY_ENV = "IMG2IMG_MAX_MEMORY"
DEFAULT_SHARE = 0.9  # of physical memory, when the budget is not given
RUNTIME_BYTES = 1.0e9  # Python, PyTorch, OpenVINO and the text encoders' buffers
DIFFUSION_BYTES_PER_PIXEL = 1400.0  # in a 16-bit dtype; float32 doubles it
STYLE_BASE_BYTES, STYLE_BYTES_PER_PIXEL = 0.25e9, 800.0
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def diffusion_peak_bytes(weights_bytes: int, working: tuple[int, int], dtype_bytes: int) -> int:
    """Estimated peak for a diffusion request at ``working`` (w, h) whose weight files hold ``weights_bytes``.

    Weight files are mostly fp16, so their size in a dtype of ``dtype_bytes`` is scaled by dtype_bytes / 2.
    """
    pixels = working[0] * working[1]
    return int(weights_bytes * dtype_bytes / 2 + RUNTIME_BYTES + pixels * DIFFUSION_BYTES_PER_PIXEL * dtype_bytes / 2)


def style_peak_bytes(working: tuple[int, int]) -> int:
    """Estimated peak of the built-in style engine at ``working`` (w, h)."""
    return int(STYLE_BASE_BYTES + working[0] * working[1] * STYLE_BYTES_PER_PIXEL)


def weight_files_bytes(path: Path) -> int:
    """The size of a checkpoint file, or of a model folder's weight files."""
    if not path.is_dir():
        return path.stat().st_size
    suffixes = (".safetensors", ".bin", ".ckpt", ".pt")
    return sum(p.stat().st_size for p in path.rglob("*") if p.suffix in suffixes and p.is_file())


def memory_budget(given: int | str | None = None) -> int | None:
    """The budget in bytes: ``given``, else $IMG2IMG_MAX_MEMORY, else 90% of physical memory (None if unknown)."""
    if given is None:
        given = os.environ.get(MEMORY_ENV) or None
    if given is not None:
        return parse_bytes(given, MEMORY_ENV if isinstance(given, str) else "max_memory")
    total = physical_memory()
    return None if total is None else int(total * DEFAULT_SHARE)


def parse_bytes(value: int | str, name: str) -> int:
    """Bytes from an integer or a text such as "12GB", "800 MiB" or "4000000000"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    unit = found[2].lower() if found else ""
    if not found or unit not in _UNITS or float(found[1]) <= 0:
        raise InvalidArgument(name, "a memory size such as 12GB, 800MB or a number of bytes", value)
    return int(float(found[1]) * _UNITS[unit])


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory() -> int | None:
    """Bytes the system can give without swapping: MemAvailable on Linux, else the free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(estimate: int, budget: int | None, what: str) -> None:
    """Refuse ``what`` (a working size and model) when its estimate exceeds the budget."""
    if budget is not None and estimate > budget:
        raise InvalidArgument(
            "size", f"a working size that fits the memory budget of {budget / 1e9:.1f} GB ({MEMORY_ENV}; a smaller "
            "--size or --max-side needs less)", f"{what}, about {estimate / 1e9:.1f} GB")
