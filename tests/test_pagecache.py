"""Releasing a read-only weight file's resident pages: the memory goes, the bytes stay."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import pytest

from img2img.models import pagecache

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")


def resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:
            inside = line.split()[-1] == str(path.resolve())
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_release_drops_resident_pages_and_keeps_the_bytes(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    payload = bytes(range(256)) * (16 * 4096)  # 16 MiB
    weights.write_bytes(payload)
    with weights.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert mapped[:] == payload  # reads every page
        assert resident_kb(weights) >= 15 * 1024
        assert pagecache.release([weights]) == 1
        assert resident_kb(weights) < 1024
        assert mapped[:] == payload  # read again from the page cache


def test_writable_mappings_are_left_alone(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch.bin"
    scratch.write_bytes(bytes(4 * 4096))
    with scratch.open("r+b") as handle, mmap.mmap(handle.fileno(), 0) as mapped:
        mapped[:5] = b"dirty"
        assert pagecache.release([scratch]) == 0
        assert mapped[:5] == b"dirty"


def test_releasing_keeps_releasing_while_the_block_runs(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(8 * 2**20))
    with weights.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        with pagecache.releasing([weights], interval_s=0.01):
            assert sum(mapped[::4096]) == 0
        assert resident_kb(weights) < 1024


def test_private_mappings_are_released_only_when_asked(tmp_path: Path) -> None:
    """safetensors maps its files private and writable: left alone unless the caller knows nothing wrote there."""
    weights = tmp_path / "weights.safetensors"
    payload = bytes(range(256)) * (16 * 4096)
    weights.write_bytes(payload)
    with weights.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
        assert mapped[:] == payload
        assert pagecache.release([weights]) == 0 and resident_kb(weights) >= 15 * 1024
        assert pagecache.release([weights], unwritten=True) == 1 and resident_kb(weights) < 1024
        assert mapped[:] == payload


@pytest.mark.parametrize(("family", "placement_dtype"), [("sd", "float32"), ("sd", "bfloat16"), ("sd3", "bfloat16")])
def test_weights_of_another_dtype_load_converted_to_the_same_values(tiny_sd: Path, tiny_sd3: Path, tmp_path: Path,
                                                                    family: str, placement_dtype: str) -> None:
    """fp16 files for a float32 or bf16 placement are read as fp16 and converted with their pages given back: the
    same weights as diffusers' own load in that dtype (SD 3's T5 among them)."""
    import diffusers
    import torch

    from img2img.models.detect import inspect_model
    from img2img.models.device import Placement
    from img2img.models.loading import _stored_dtype, load_model

    pipeline_class = diffusers.StableDiffusion3Pipeline if family == "sd3" else diffusers.StableDiffusionPipeline
    model, dtype = (tiny_sd3 if family == "sd3" else tiny_sd), getattr(torch, placement_dtype)
    half = tmp_path / "half"
    pipeline_class.from_pretrained(model).to(torch.float16).save_pretrained(half)  # every weight in fp16
    files = inspect_model(half)
    assert _stored_dtype(files) == torch.float16 and _stored_dtype(inspect_model(model)) == torch.float32
    loaded = load_model(files, Placement("cpu", dtype, "torch"))
    direct = pipeline_class.from_pretrained(half, torch_dtype=dtype)
    names = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3") if family == "sd3" else (
        "unet", "vae", "text_encoder")
    for name in names:
        ours, theirs = getattr(loaded.pipeline, name).state_dict(), getattr(direct, name).state_dict()
        assert all(ours[key].dtype == dtype and torch.equal(ours[key], theirs[key]) for key in theirs), name
