"""Text encoders' weights in a file mapping: the same values, given back after encoding, never losing a write."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from img2img.models.mapped_weights import MappedWeights, _written_kb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file mappings are given back on Linux")


def resident_kb(address: int) -> int:
    lines = Path("/proc/self/smaps").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(f"{address:x}-"))
    return int(next(line for line in lines[index + 1:] if line.startswith("Rss:")).split()[1])


def test_mapped_module_computes_the_same_and_gives_its_pages_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512))
    module[0].register_buffer("ids", torch.arange(7))
    module = module.to(torch.bfloat16)
    tied = torch.nn.Linear(512, 512, bias=False).to(torch.bfloat16)
    module.append(tied)
    module.append(torch.nn.Linear(512, 512, bias=False))
    module[-1].weight = tied.weight  # tied weights stay tied
    inputs = torch.randn(3, 512, dtype=torch.bfloat16)
    expected = module(inputs)

    weights = MappedWeights(module, tmp_path)
    assert list(tmp_path.iterdir()) == []  # unlinked: nothing is left behind
    assert torch.equal(module(inputs), expected)
    assert module[-1].weight is module[-2].weight and torch.equal(module[0].ids, torch.arange(7))
    assert resident_kb(weights._address) > 4000  # the forward pass read every weight (about 4.5 MB)
    assert weights.release()
    assert resident_kb(weights._address) == 0
    assert torch.equal(module(inputs), expected)  # read back from the page cache


def test_a_written_mapping_is_never_given_back(tmp_path: Path) -> None:
    module = torch.nn.Linear(256, 256)
    weights = MappedWeights(module, tmp_path)
    with torch.no_grad():
        module.weight[0, 0] = 42.0  # a private copy of that page now holds the only 42
    assert _written_kb(weights._address) > 0
    assert not weights.release()
    assert module.weight[0, 0].item() == 42.0


def test_without_a_writable_cache_the_weights_stay_where_they_are(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from img2img.models.mapped_weights import PIPELINE_KEY, map_weights, release

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    encoder = torch.nn.Linear(8, 8)
    before = encoder.weight.data_ptr()
    pipeline = SimpleNamespace(text_encoder=encoder)
    map_weights(pipeline, blocked / "tmp")  # cannot be made: no mapping, no error
    assert pipeline.__dict__[PIPELINE_KEY] == [] and encoder.weight.data_ptr() == before
    release(pipeline)  # nothing to give back
    map_weights(pipeline, tmp_path / "tmp")
    assert len(pipeline.__dict__[PIPELINE_KEY]) == 1 and encoder.weight.data_ptr() != before
