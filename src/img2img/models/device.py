"""Device and precision policy: the one place that decides where a model runs and in which dtype."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from img2img.errors import InvalidArgument
from img2img.models.backends import BACKENDS as BACKEND_TABLE
from img2img.models.backends import check_placement

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


BACKENDS = ("auto", *BACKEND_TABLE)
BACKEND_ENV = "IMG2IMG_BACKEND"  # read when backend is "auto": torch or openvino
# Weight quantization, opt-in because it approximates: "int8" stores the UNet's matrix-multiply weights as 8-bit
# integers with a scale and zero point per output channel (OpenVINO on the CPU; SD 1.5 peak 3.06 -> 2.81 GiB).
QUANTIZE = ("none", "int8")


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu", "cuda", "cuda:1", "mps"
    dtype: torch.dtype
    backend: str = "torch"  # "openvino" runs the UNet and VAE through OpenVINO (CPU only)
    quantize: str = "none"  # "int8": the UNet's matrix-multiply weights in 8 bits (OpenVINO only)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def choose_placement(device: str = "auto", dtype: str = "auto", backend: str = "auto",
                     quantize: str = "none") -> Placement:
    """CUDA in fp16 when present, else Apple MPS in fp16, else the CPU: in bf16 when it multiplies bf16 natively
    (AVX512-BF16 or AMX), else fp32. ``device`` and ``dtype`` override.

    fp16 is never chosen on the CPU by default: CPU matrix multiplies in fp16 are orders of magnitude slower.
    bf16 keeps fp32's range, so nothing overflows; its matmul peak is about 2.3x fp32's on AVX512-BF16 CPUs.
    On the CPU the UNet and VAE run through OpenVINO when it is installed (``backend="auto"``, unless
    $IMG2IMG_BACKEND says torch); ``backend="torch"`` keeps them in PyTorch. ``quantize="int8"`` (OpenVINO
    only) approximates the UNet's matrix-multiply weights in 8 bits; it is never chosen by default.
    """
    if device.split(":")[0] not in DEVICES:
        raise InvalidArgument("device", f"one of {', '.join(DEVICES)} (optionally cuda:N)", device)
    if dtype not in DTYPES:
        raise InvalidArgument("dtype", f"one of {', '.join(DTYPES)}", dtype)
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto")
    if backend not in BACKENDS:
        raise InvalidArgument("backend", f"one of {', '.join(BACKENDS)}", backend)
    if quantize not in QUANTIZE:
        raise InvalidArgument("quantize", f"one of {', '.join(QUANTIZE)}", quantize)
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
        cpu_dtype = torch.bfloat16 if device == "cpu" and cpu_has_fast_bf16() else torch.float32
        chosen = cpu_dtype if device == "cpu" else torch.float16
    if backend == "auto":
        backend = "openvino" if device == "cpu" and importlib.util.find_spec("openvino") else "torch"
    check_placement(backend, device, str(chosen).removeprefix("torch."), quantize)  # what the backend runs
    if quantize != "none" and not importlib.util.find_spec("nncf"):
        raise InvalidArgument("quantize", "none, or NNCF installed for int8 (pip install 'img2img[int8]')", quantize)
    return Placement(device=device, dtype=chosen, backend=backend, quantize=quantize)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (x86 AVX512-BF16 or AMX-BF16); read from /proc/cpuinfo."""
    try:
        with Path("/proc/cpuinfo").open(encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass  # not Linux: fp32 is the safe choice
    return False
