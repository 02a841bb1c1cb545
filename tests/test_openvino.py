"""The OpenVINO path for the UNet and VAE: same results as PyTorch, converted once and reused from the cache."""

from __future__ import annotations

import numpy as np
import pytest

from img2img import Engine, GenerationRequest, InvalidArgument
from img2img.models import ov_runtime, ov_unet

pytest.importorskip("openvino")


def _request(photo, model, **fields) -> GenerationRequest:
    return GenerationRequest(**{"source": photo, "prompt": "a red fox", "negative_prompt": "blurry", "strength": 0.6,
                                "steps": 6, "seed": 11, "model": str(model), **fields})


@pytest.mark.parametrize("model_fixture", ["tiny_sd", pytest.param("tiny_sdxl", marks=pytest.mark.slow)])
def test_openvino_matches_pytorch_and_reuses_its_conversion(model_fixture, photo, request) -> None:
    model = request.getfixturevalue(model_fixture)
    torch_result = Engine(device="cpu", dtype="float32", backend="torch").generate(_request(photo, model))
    first = Engine(device="cpu", dtype="float32", backend="openvino")
    loaded = first.load(str(model))
    assert type(loaded.pipeline.unet) is ov_unet.OpenVinoUNet
    assert ov_runtime.has_ir(loaded.sha256, "f32")
    ov_result = first.generate(_request(photo, model))
    difference = np.abs(np.asarray(ov_result.images[0], float) - np.asarray(torch_result.images[0], float))
    assert difference.max() <= 2 and difference.mean() < 0.05  # fp32 both ways: rounding of the last bit only
    again = Engine(device="cpu", dtype="float32", backend="openvino")  # loads from the cached IR
    assert again.generate(_request(photo, model)).images[0].tobytes() == ov_result.images[0].tobytes()


@pytest.mark.slow  # 17 s; CI runs it with -m slow
def test_bf16_openvino_stays_close_to_fp32(tiny_sd, photo) -> None:
    reference = Engine(device="cpu", dtype="float32", backend="torch").generate(_request(photo, tiny_sd)).images[0]
    fast = Engine(device="cpu", dtype="bfloat16", backend="openvino").generate(_request(photo, tiny_sd)).images[0]
    mse = np.mean((np.asarray(fast, float) - np.asarray(reference, float)) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 25


def test_a_failed_conversion_is_a_model_error_naming_the_way_out(tiny_sd, monkeypatch) -> None:
    from img2img import ModelError

    def fail(*_args, **_kwargs):
        raise RuntimeError("Cannot convert operation aten::mystery")

    monkeypatch.setattr(ov_runtime, "export_ir", fail)
    with pytest.raises(ModelError, match=r"could not be converted for OpenVINO \(Cannot convert .*--backend torch"):
        Engine(device="cpu", dtype="float32", backend="openvino").load(str(tiny_sd))


def test_openvino_needs_the_cpu_and_no_fp16() -> None:
    with pytest.raises(InvalidArgument, match="float32 or bfloat16 with OpenVINO"):
        Engine(device="cpu", dtype="float16", backend="openvino")
    with pytest.raises(InvalidArgument, match="backend should be one of auto, torch, openvino"):
        Engine(device="cpu", backend="tensorrt")


@pytest.mark.slow  # 20 s each (an opt-in path); CI runs it with -m slow
@pytest.mark.parametrize("model_fixture", ["tiny_sd", "tiny_sdxl"])
def test_int8_matrix_multiplies_are_opt_in_calibrated_close_and_recorded(model_fixture, photo, request) -> None:
    pytest.importorskip("nncf")
    import openvino as ov

    tiny_sd = request.getfixturevalue(model_fixture)

    assert Engine(device="cpu", backend="openvino").placement.quantize == "none"  # never by default
    reference = Engine(device="cpu", dtype="float32", backend="openvino").generate(_request(photo, tiny_sd))
    engine = Engine(device="cpu", dtype="float32", backend="openvino", quantize="int8")
    loaded = engine.load(str(tiny_sd))
    assert ov_runtime.has_ir(loaded.sha256, "f32-int8") and ov_runtime.has_ir(loaded.sha256, "f32")
    folder = ov_runtime.ir_folder(loaded.sha256, "f32-int8")
    # The matrix multiplies' weights are in 8 bits and their activations quantized; the convolutions keep their
    # precision.
    unet = ov.Core().read_model(folder / "unet.xml")
    assert 0.2 < _share_in_8_bits(unet) < 0.9
    quantizers = [op for op in unet.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert quantizers and all(user.get_node().get_type_name() in ("MatMul", "ScaledDotProductAttention", "ShapeOf")
                              for op in quantizers for user in op.output(0).get_target_inputs())
    assert not [op for op in ov.Core().read_model(ov_runtime.ir_folder(loaded.sha256, "f32") / "unet.xml").get_ops()
                if op.get_type_name() == "FakeQuantize"]
    assert _share_in_8_bits(ov.Core().read_model(folder / "vae_decoder.xml")) == 0  # the VAE keeps its precision
    result = engine.generate(_request(photo, tiny_sd))
    assert result.record.quantize == "int8" and reference.record.quantize == "none"
    assert '"quantize": "int8"' in result.record.to_json()
    approximate, exact = np.asarray(result.images[0], float), np.asarray(reference.images[0], float)
    mse = np.mean((approximate - exact) ** 2)
    assert mse > 0 and 10 * np.log10(255**2 / mse) > 25  # an approximation, but a close one


def test_int8_needs_openvino_and_names_its_choices() -> None:
    with pytest.raises(InvalidArgument, match="quantize should be none unless the backend is openvino"):
        Engine(device="cpu", backend="torch", quantize="int8")
    with pytest.raises(InvalidArgument, match="quantize should be one of none, int8, but got 'int4'"):
        Engine(device="cpu", quantize="int4")


def _share_in_8_bits(model) -> float:
    """The fraction of a model's constant values (weights, mostly) stored as 8-bit integers."""
    sizes = {"8 bits": 0, "all": 0}
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            count = int(np.prod(list(op.get_output_shape(0))))
            sizes["all"] += count
            sizes["8 bits"] += count if op.get_output_element_type(0).get_type_name() in ("u8", "i8") else 0
    return sizes["8 bits"] / sizes["all"]


@pytest.mark.slow  # 19 s; CI runs it with -m slow
def test_a_new_size_recompiles_and_gives_what_a_fresh_engine_gives(tiny_sd, photo) -> None:
    engine = Engine(device="cpu", dtype="float32", backend="openvino")
    small, wide = _request(photo, tiny_sd, size=(64, 64)), _request(photo, tiny_sd, size=(96, 64))
    first = engine.generate(small).images[0]
    second = engine.generate(wide).images[0]
    assert second.size == (96, 64)
    assert engine.generate(small).images[0].tobytes() == first.tobytes()
    fresh = Engine(device="cpu", dtype="float32", backend="openvino").generate(wide).images[0]
    assert fresh.tobytes() == second.tobytes()


@pytest.mark.slow  # 17 s; CI runs it with -m slow
def test_short_of_memory_the_unet_graph_is_freed_before_decoding(tiny_sd, photo, monkeypatch) -> None:
    """With too little memory free to decode in (the machine's reading replaced: a test cannot exhaust it), the
    compiled UNet goes first, the result is the same bytes, and the next image compiles it again."""
    from img2img.engine import diffusion

    engine = Engine(device="cpu", dtype="float32", backend="openvino")
    plain = engine.generate(_request(photo, tiny_sd, num_images=2))
    monkeypatch.setattr(diffusion, "available_memory", lambda: 200_000_000)
    short = engine.generate(_request(photo, tiny_sd, num_images=2))
    assert [image.tobytes() for image in short.images] == [image.tobytes() for image in plain.images]
    assert sum("only 0.2 GB of memory was free to decode in" in note for note in short.notes) == 2, short.notes
    unet = engine.load(str(tiny_sd)).pipeline.unet
    assert unet._request._compiled is None  # freed before the last decode
    monkeypatch.setattr(diffusion, "available_memory", lambda: None)  # unknown: the float32 path's own release
    calm = engine.generate(_request(photo, tiny_sd))
    assert not any("free to decode" in note for note in calm.notes) and unet._request._compiled is None
    unet.release_before_decoding = False  # a bf16 path's: kept while decoding
    kept = engine.generate(_request(photo, tiny_sd))
    assert kept.images[0].tobytes() == calm.images[0].tobytes() and unet._request._compiled is not None
