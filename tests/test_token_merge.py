"""Token merging (``merge_tokens``, ToMe for SD): the merge itself, both backends, records, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from img2img import Engine, GenerationRequest, InvalidArgument
from img2img.engine.token_merge import merge_plan
from tiny_models import build_tiny_sd


@pytest.fixture(scope="module")
def tiny_sd_attending(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD model with attention at full latent resolution, where SD has it and where tokens merge."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-attention-first", attention_first=True)


@pytest.fixture(scope="module")
def tiny_sd_attending_8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As ``tiny_sd_attending``, with SD's latents an eighth of the picture's size (photo sizes stay quick)."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-attention-first-8", attention_first=True,
                         vae_blocks=4)


def _request(photo, model, **fields) -> GenerationRequest:
    return GenerationRequest(**{"source": photo, "prompt": "a red fox", "strength": 0.7, "steps": 6, "seed": 8,
                                "model": str(model), **fields})


def test_merging_averages_similar_tokens_and_spreads_the_result_back() -> None:
    generator = torch.Generator().manual_seed(0)
    cells = torch.randn(2, 3 * 4, 8, generator=generator)  # a 6x8 grid of 2x2 cells, each one colour
    grid = cells.view(2, 3, 4, 8).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).reshape(2, 48, 8)
    merge, unmerge = merge_plan(grid, 6, 8, 0.5)
    merged = merge(grid)
    assert merged.shape == (2, 24, 8)
    assert torch.allclose(unmerge(merged), grid, atol=1e-6)  # every merged token joined its own cell's twin
    keep, back = merge_plan(grid, 6, 8, 0.0)
    assert torch.equal(back(keep(grid)), grid)

    noise = torch.randn(1, 7 * 5, 16, generator=generator)  # an odd grid: the last row and column are sources
    merge, unmerge = merge_plan(noise, 7, 5, 0.5)
    assert merge(noise).shape == (1, 35 - 17, 16) and unmerge(merge(noise)).shape == noise.shape


def test_sources_are_ordered_most_similar_first_ties_in_raster_order() -> None:
    from img2img.engine.token_merge import _most_similar_first

    generator = torch.Generator().manual_seed(3)
    best = (torch.rand(2, 4099, generator=generator) * 2 - 1).round(decimals=2)  # many exact ties
    expected = best.argsort(dim=-1, descending=True, stable=True)
    assert torch.equal(_most_similar_first(best), expected)


@pytest.mark.parametrize("backend", ["torch", pytest.param("openvino", marks=pytest.mark.slow)])  # openvino: 17 s
def test_merged_tokens_run_on_both_backends_reproduce_and_are_recorded(backend, tiny_sd_attending, photo) -> None:
    engine = Engine(device="cpu", dtype="float32", backend=backend)
    plain = engine.generate(_request(photo, tiny_sd_attending))
    merged = engine.generate(_request(photo, tiny_sd_attending, merge_tokens=0.5))
    again = Engine(device="cpu", dtype="float32", backend=backend).generate(
        _request(photo, tiny_sd_attending, merge_tokens=0.5))
    after = engine.generate(_request(photo, tiny_sd_attending))
    assert merged.images[0].tobytes() == again.images[0].tobytes()
    assert merged.images[0].tobytes() != plain.images[0].tobytes()
    assert after.images[0].tobytes() == plain.images[0].tobytes()  # the model's own attention is back
    assert "Token merging ratio: 0.5" in merged.record.to_parameters_text()
    assert "Token merging" not in plain.record.to_parameters_text()
    assert not [note for note in merged.notes if "PyTorch" in note]  # OpenVINO: its graph that merges ran
    difference = np.abs(np.asarray(merged.images[0], float) - np.asarray(plain.images[0], float))
    assert difference.mean() < 40


def test_merging_at_more_levels_merges_the_lower_levels_tokens_too(tiny_sd_attending, monkeypatch) -> None:
    """The tiny UNet's first level (attention) has a 15x15 latent's 225 tokens, its middle block 64 (8x8, the
    second level); one level merges only the first's, two both, and the model's own attention comes back."""
    from diffusers import UNet2DConditionModel

    from img2img.engine import token_merge

    merged_counts: list[int] = []

    def recording(tokens: torch.Tensor, *args: object) -> object:
        merged_counts.append(tokens.shape[1])
        return merge_plan(tokens, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(token_merge, "merge_plan", recording)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_attending, subfolder="unet").eval()
    inputs = (torch.randn(1, 4, 15, 15, generator=torch.Generator().manual_seed(1)), 10, torch.zeros(1, 77, 32))
    with torch.no_grad():
        own = unet(*inputs).sample
        outputs = {}
        for levels in (1, 2):
            merged_counts.clear()
            with token_merge.merging_tokens(unet, 0.5, levels):
                outputs[levels] = unet(*inputs).sample
            assert sorted(set(merged_counts)) == ([225] if levels == 1 else [64, 225])
        merged_counts.clear()
        assert torch.equal(unet(*inputs).sample, own) and not merged_counts
    assert not torch.equal(outputs[1], outputs[2]) and not torch.equal(outputs[1], own)


def test_merging_at_two_levels_is_its_own_recorded_request(tiny_sd_attending, photo) -> None:
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    one = engine.generate(_request(photo, tiny_sd_attending, merge_tokens=0.5))
    two = engine.generate(_request(photo, tiny_sd_attending, merge_tokens=0.5, merge_levels=2))
    again = engine.generate(_request(photo, tiny_sd_attending, merge_tokens=0.5, merge_levels=2))
    assert two.images[0].tobytes() == again.images[0].tobytes() != one.images[0].tobytes()
    assert "Token merging levels: 2" in two.record.to_parameters_text()
    assert "Token merging levels" not in one.record.to_parameters_text()
    with pytest.raises(InvalidArgument, match=r"^merge_levels should be in \[1, 4\], but got 5$"):
        _request(photo, tiny_sd_attending, merge_tokens=0.5, merge_levels=5).validated()


@pytest.mark.slow  # 40 s; CI runs it with -m slow
def test_openvino_merges_at_two_levels_in_a_graph_of_its_own(tiny_sd_attending_8, photo) -> None:
    """At a photo's size (a 56x37 latent, 28x19 at the second level: odd sizes round up) the graph that merges at
    two levels gives what PyTorch does; it lives beside the one-level graph, and each runs its own requests."""
    from PIL import Image

    from img2img.models import ov_runtime
    from img2img.models.ov_merge import MergeGraph

    source = Image.open(photo).convert("RGB").resize((451, 300))
    openvino = Engine(device="cpu", dtype="float32", backend="openvino")
    one = openvino.generate(_request(source, tiny_sd_attending_8, merge_tokens=0.5))
    two = openvino.generate(_request(source, tiny_sd_attending_8, merge_tokens=0.5, merge_levels=2))
    in_torch = Engine(device="cpu", dtype="float32", backend="torch").generate(
        _request(source, tiny_sd_attending_8, merge_tokens=0.5, merge_levels=2))
    assert not [note for note in (*one.notes, *two.notes) if "PyTorch" in note]
    assert _mean_difference(two, in_torch) < 0.01 < _mean_difference(two, one)
    folder = ov_runtime.ir_folder(openvino.load(str(tiny_sd_attending_8)).sha256, "f32")
    assert {MergeGraph.NAME, MergeGraph.NAME.replace(".xml", "-levels2.xml")} <= {p.name for p in folder.iterdir()}
    back = openvino.generate(_request(source, tiny_sd_attending_8, merge_tokens=0.5))
    assert back.images[0].tobytes() == one.images[0].tobytes()


@pytest.mark.slow  # 20 s; CI runs it with -m slow
def test_token_merging_is_refused_out_of_range_and_runs_with_loras_on_both_backends(tiny_sd_attending, photo,
                                                                                    tmp_path, monkeypatch) -> None:
    from tiny_models import build_tiny_lora

    with pytest.raises(InvalidArgument, match=r"^merge_tokens should be in \[0.0, 0.75\], but got 0.9$"):
        _request(photo, tiny_sd_attending, merge_tokens=0.9).validated()
    (tmp_path / "loras").mkdir()
    build_tiny_lora(tiny_sd_attending, tmp_path / "loras" / "ink.safetensors")
    monkeypatch.setenv("IMG2IMG_LORA_DIR", str(tmp_path / "loras"))
    inked = _request(photo, tiny_sd_attending, prompt="a red fox <lora:ink:0.8>", merge_tokens=0.5)
    in_openvino = Engine(device="cpu", dtype="float32", backend="openvino").generate(inked)
    in_torch = Engine(device="cpu", dtype="float32", backend="torch").generate(inked)
    plain = Engine(device="cpu", dtype="float32", backend="openvino").generate(
        _request(photo, tiny_sd_attending, merge_tokens=0.5))
    assert "Token merging ratio: 0.5" in in_openvino.record.to_parameters_text()
    assert not [note for note in in_openvino.notes if "PyTorch" in note]  # the LoRA patched the merging graph
    assert _mean_difference(in_openvino, in_torch) < 0.05 < _mean_difference(in_openvino, plain)


@pytest.mark.slow  # 15 s; CI runs it with -m slow
def test_a_merging_graph_that_fails_hands_the_run_to_pytorch_with_one_note(tiny_sd_attending, photo,
                                                                             monkeypatch) -> None:
    from img2img.models.ov_merge import MergeGraph
    from img2img.models.ov_runtime import OpenVinoFailure

    def fail(self: MergeGraph) -> None:
        raise OpenVinoFailure("the UNet that merges tokens could not be converted: no")

    monkeypatch.setattr(MergeGraph, "_export", fail)
    request = _request(photo, tiny_sd_attending, merge_tokens=0.5)
    failed = Engine(device="cpu", dtype="float32", backend="openvino").generate(request)
    in_torch = Engine(device="cpu", dtype="float32", backend="torch").generate(request)
    assert [note for note in failed.notes if "PyTorch" in note] == [
        "OpenVINO could not run the UNet that merges tokens (the UNet that merges tokens could not be converted: "
        "no); it runs with PyTorch instead"]
    assert _mean_difference(failed, in_torch) < 0.05


def test_an_earlier_merging_graph_is_removed_beside_the_current_one(tmp_path) -> None:
    from img2img.models.ov_graphs import GraphSite
    from img2img.models.ov_merge import MergeGraph

    current = [MergeGraph.NAME.replace(".xml", suffix) for suffix in (".xml", ".bin", "-levels2.xml")]
    for name in ("unet_merge.xml", "unet_merge.bin", "unet_merge-v1-levels2.xml", *current, "unet.xml",
                 "unet_control.xml"):
        (tmp_path / name).write_text("ir")
    MergeGraph(GraphSite(None, tmp_path, {}, None, "bf16", lambda: None, {}))._export()  # current: no conversion
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["unet.xml", "unet_control.xml", *current])


def _mean_difference(one, other) -> float:
    return float(np.abs(np.asarray(one.images[0], float) - np.asarray(other.images[0], float)).mean())


class _MergedAttention(torch.nn.Module):
    """Self-attention over a latent's tokens with ``merge_plan`` around it, as the UNet's first level has it."""

    def forward(self, sample: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = sample.shape
        tokens = sample.flatten(2).transpose(1, 2)
        merge, unmerge = merge_plan(tokens, height, width, parts)
        merged = merge(tokens)
        attended = torch.softmax(merged @ merged.transpose(1, 2), dim=-1) @ merged
        return unmerge(attended).transpose(1, 2).reshape(batch, channels, height, width)


def test_the_merge_traced_once_for_openvino_keeps_every_size_and_ratio() -> None:
    """One graph, traced at 15x15 with ratio 0.5, merges as PyTorch does at photo latents (37x56: over 256
    tokens, a flat region's equal tokens; 8x128) and other ratios, compiled at static shapes as the engine does."""
    import warnings

    import openvino as ov

    from img2img.engine.token_merge import RATIO_PARTS

    module = _MergedAttention().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        graph = ov.convert_model(module, example_input=(torch.randn(2, 16, 15, 15), torch.tensor(RATIO_PARTS // 2)),
                                 input=[([-1, 16, -1, -1], ov.Type.f32), ([], ov.Type.i64)])
    generator = torch.Generator().manual_seed(3)
    for height, width, ratio in [(37, 56, 0.5), (8, 128, 0.75), (15, 15, 0.3), (12, 16, 0.0)]:
        sample = torch.randn(2, 16, height, width, generator=generator)
        sample[:, :, : height // 2] = sample[:, :, :1, :1]  # equal tokens: ties in every similarity
        parts = torch.tensor(round(ratio * RATIO_PARTS))
        with torch.no_grad():
            expected = module(sample, parts)
        static = graph.clone()
        static.reshape({static.inputs[0]: list(sample.shape), static.inputs[1]: []})
        compiled = ov.Core().compile_model(static, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got = compiled([sample.numpy(), parts.numpy()])[0]
        assert np.abs(got - expected.numpy()).max() < 1e-4, (height, width, ratio)


@pytest.mark.slow  # 70 s; CI runs it with -m slow
def test_openvino_merges_in_its_own_graph_as_pytorch_does_at_photo_sizes(tiny_sd_attending_8, photo) -> None:
    from PIL import Image

    openvino = Engine(device="cpu", dtype="float32", backend="openvino")
    torch_engine = Engine(device="cpu", dtype="float32", backend="torch")
    for size, ratio in [((451, 300), 0.5), ((1024, 64), 0.75)]:
        source = Image.open(photo).convert("RGB").resize(size)
        request = _request(source, tiny_sd_attending_8, merge_tokens=ratio)
        in_openvino, in_torch = openvino.generate(request), torch_engine.generate(request)
        plain = openvino.generate(_request(source, tiny_sd_attending_8))
        assert in_openvino.images[0].size == size
        assert not [note for note in in_openvino.notes if "PyTorch" in note]
        assert _mean_difference(in_openvino, in_torch) < 0.01 < 0.2 < _mean_difference(in_openvino, plain), size


def test_sdxl_merges_at_its_first_level_with_attention(tiny_sdxl, tiny_sd_attending, photo) -> None:
    """SDXL's first level has no attention; merging acts at its second, where its tokens are most."""
    from diffusers import UNet2DConditionModel

    from img2img.engine.token_merge import first_attention_level

    assert first_attention_level(UNet2DConditionModel.from_pretrained(tiny_sdxl, subfolder="unet")) == 1
    assert first_attention_level(UNet2DConditionModel.from_pretrained(tiny_sd_attending, subfolder="unet")) == 0
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    plain = engine.generate(_request(photo, tiny_sdxl))
    merged = engine.generate(_request(photo, tiny_sdxl, merge_tokens=0.5))
    assert merged.images[0].tobytes() != plain.images[0].tobytes()


def test_a_sweep_compares_token_merging_side_by_side(tiny_sd_attending, photo, tmp_path) -> None:
    from PIL import Image

    from test_cli import img2img

    done = img2img("sweep", str(photo), "a red fox", "--model", str(tiny_sd_attending), "--steps", "4", "--seeds",
                   "3", "--merge-tokens", "0,0.5", "--device", "cpu", "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "no merging" in done.stdout and "merge 0.5" in done.stdout
    cells = sorted(path for path in tmp_path.glob("*.png") if "sweep" not in path.name)
    texts = [Image.open(path).info["parameters"] for path in cells]
    assert len(cells) == 2 and ["Token merging ratio: 0.5" in text for text in texts] == [False, True]
    assert Image.open(cells[0]).tobytes() != Image.open(cells[1]).tobytes()
