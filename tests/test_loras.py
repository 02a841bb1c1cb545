"""LoRAs as A1111 users write them: <lora:NAME:WEIGHT> in the prompt, found by name, checked against the model,
applied through diffusers and PEFT (parity with diffusers' load_lora_weights), recorded by hash, and never left
on the cached model for the next request."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from img2img import Engine, GenerationRequest, InvalidArgument
from img2img.errors import ModelError
from tiny_models import build_tiny_lora, reference_img2img, square_photo


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path, tiny_sdxl: Path) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    build_tiny_lora(tiny_sd, folder / "ink_v2.safetensors", "kohya")
    build_tiny_lora(tiny_sd, folder / "peft-style.safetensors", "diffusers", seed=2)
    build_tiny_lora(tiny_sdxl, folder / "xl_glow.safetensors", "diffusers", seed=3)
    build_tiny_lora(tiny_sd, folder / "locon.safetensors", "kohya", seed=5, convolutions=True)
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return square_photo(tmp_path_factory.mktemp("square"))


@pytest.fixture
def loras(lora_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMG2IMG_LORA_DIR", str(lora_dir))
    return lora_dir


def _request(photo: Path, model: Path, prompt: str, **fields) -> GenerationRequest:  # type: ignore[no-untyped-def]
    return GenerationRequest(source=photo, prompt=prompt, negative_prompt="blurry", model=str(model), strength=0.6,
                             steps=10, seed=1234, guidance_scale=7.5, sampler="Euler", size=(64, 64), **fields)


def _diffusers(model: Path, lora: Path | None, weight: float, photo: Path) -> np.ndarray:
    pipe = reference_img2img(model)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="x")
        pipe.set_adapters(["x"], [weight])
    image = pipe(prompt="a red fox in the snow", negative_prompt="blurry", image=Image.open(photo).convert("RGB"),
                 strength=0.6, guidance_scale=7.5, num_inference_steps=10,
                 generator=torch.Generator("cpu").manual_seed(1234), output_type="np").images[0]
    return (image * 255).round()


@pytest.mark.parametrize(("model", "file", "weight"), [("sd", "ink_v2", 0.8), ("sd", "peft-style", 1.3),
                                                       ("sd", "locon", 0.9), ("sdxl", "xl_glow", 0.7)])
def test_a_lora_matches_diffusers_load_lora_weights(model, file, weight, tiny_sd, tiny_sdxl, photo, loras) -> None:
    folder = tiny_sd if model == "sd" else tiny_sdxl
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    ours = engine.generate(_request(photo, folder, f"a red fox in the snow<lora:{file}:{weight}>"))
    reference = _diffusers(folder, loras / f"{file}.safetensors", weight, photo)
    gap = np.abs(np.asarray(ours.images[0], float) - reference).max()
    assert gap <= 2, gap
    plain = engine.generate(_request(photo, folder, "a red fox in the snow"))
    assert np.abs(np.asarray(plain.images[0], float) - np.asarray(ours.images[0], float)).max() > 2  # it acts
    record = ours.record
    assert record.prompt == f"a red fox in the snow<lora:{file}:{weight}>"  # kept with its tag
    assert [(lora["name"], lora["weight"]) for lora in record.loras] == [(file, weight)]
    assert f'Lora hashes: "{file}: {record.loras[0]["sha256"][:12]}"' in record.to_parameters_text()
    assert "loras" not in json.loads(plain.record.to_json())  # records without LoRAs read as before


def test_weight_zero_is_no_lora_and_the_cached_model_is_untouched(tiny_sd, photo, loras) -> None:
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    before = engine.generate(_request(photo, tiny_sd, "a red fox in the snow"))
    zero = engine.generate(_request(photo, tiny_sd, "a red fox in the snow<lora:ink_v2:0>"))
    engine.generate(_request(photo, tiny_sd, "a red fox in the snow<lora:ink_v2:1> <lora:peft-style:0.5>"))
    after = engine.generate(_request(photo, tiny_sd, "a red fox in the snow"))
    assert zero.images[0].tobytes() == before.images[0].tobytes() == after.images[0].tobytes()


def test_two_loras_and_a_sweep_over_prompts(tiny_sd, photo, loras) -> None:
    from img2img.sweep import make_axis

    engine = Engine(device="cpu", dtype="float32", backend="torch")
    prompts = ["a red fox in the snow<lora:ink_v2:0.6>", "a red fox in the snow<lora:peft-style:0.9>",
               "a red fox in the snow"]
    swept = engine.sweep(_request(photo, tiny_sd, prompts[0]), [make_axis("prompt", prompts)])
    alone = [engine.generate(_request(photo, tiny_sd, prompt)).images[0].tobytes() for prompt in prompts]
    assert [image.tobytes() for image in swept.result.images] == alone
    assert [len(record.loras) for record in swept.result.records] == [1, 1, 0]


def test_bad_loras_are_refused_in_one_line(tiny_sd, tiny_sdxl, photo, loras, tmp_path) -> None:
    engine = Engine(device="cpu", dtype="float32", backend="torch")
    with pytest.raises(InvalidArgument, match=r"prompt should be a LoRA registered .* in .*loras.* \(ink_v2, "
                                              r"locon, peft-style, xl_glow\), but got 'nope'"):
        engine.generate(_request(photo, tiny_sd, "a fox <lora:nope:1>"))
    with pytest.raises(InvalidArgument, match=r"prompt should be LoRAs for .* the model in use, but got 'xl_glow"):
        engine.generate(_request(photo, tiny_sd, "a fox <lora:xl_glow:1>"))
    from safetensors.torch import save_file

    save_file({"emb_params": torch.zeros(1, 32)}, str(loras / "not-a-lora.safetensors"))
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, str(loras / "loha.safetensors"))
    try:
        with pytest.raises(InvalidArgument, match=r"LoRA names that are LoRA files, but got 'not-a-lora \(.* is an "
                                                  r"embedding\)'"):
            engine.generate(_request(photo, tiny_sd, "a fox <lora:not-a-lora:1>"))
        with pytest.raises(ModelError, match=r"loha.safetensors is a LyCORIS LoHa/LoKr/OFT/IA3 file"):
            engine.generate(_request(photo, tiny_sd, "a fox <lora:loha:1>"))
    finally:
        (loras / "not-a-lora.safetensors").unlink()
        (loras / "loha.safetensors").unlink()
    with pytest.raises(InvalidArgument, match=r"LoRA weights in \[-5, 5\]"):
        GenerationRequest(source=photo, prompt="a fox <lora:ink_v2:9>").validated()
    many = " ".join(f"<lora:l{n}:1>" for n in range(11))
    with pytest.raises(InvalidArgument, match="prompt should be at most 10 LoRAs, but got '11 LoRAs'"):
        GenerationRequest(source=photo, prompt=many).validated()
    plain = engine.generate(_request(photo, tiny_sd, "a fox <lora:nope:1>", prompt_syntax="plain"))
    assert plain.record.loras == ()  # a plain prompt's tags are words, as before LoRAs existed


def test_openvino_adds_the_same_deltas_as_peft(tiny_sd, tiny_sdxl, loras) -> None:
    """The UNet deltas the OpenVINO backend patches in are PEFT's own, for both key layouts and SDXL."""
    from peft.tuners.lora import LoraLayer

    from img2img.models.ov_lora import unet_factors

    for model, file in ((tiny_sd, "ink_v2"), (tiny_sd, "peft-style"), (tiny_sd, "locon"), (tiny_sdxl, "xl_glow")):
        xl = (model / "text_encoder_2").is_dir()
        pipeline_class = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
        extra = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
        pipe = pipeline_class.from_pretrained(model, **extra)
        pipe.load_lora_weights(str(loras / f"{file}.safetensors"), adapter_name="x")
        expected = {f"{name}.weight": module.get_delta_weight("x") for name, module in pipe.unet.named_modules()
                    if isinstance(module, LoraLayer)}
        factors = unet_factors(pipeline_class, loras / f"{file}.safetensors")
        assert set(factors) == set(expected), file
        for name, delta in expected.items():
            assert torch.allclose(factors[name].delta(tuple(delta.shape)), delta, atol=1e-6), (file, name)


@pytest.mark.slow  # 15 s; CI runs it with -m slow
def test_a_lora_on_openvino_matches_pytorch_and_comes_off_again(tiny_sd, photo, loras) -> None:
    pytest.importorskip("openvino")
    openvino = Engine(device="cpu", dtype="float32", backend="openvino")
    reference = Engine(device="cpu", dtype="float32", backend="torch").generate(
        _request(photo, tiny_sd, "a red fox in the snow<lora:ink_v2:0.8> <lora:peft-style:0.5>"))
    base = openvino.generate(_request(photo, tiny_sd, "a red fox in the snow"))
    with_lora = openvino.generate(_request(photo, tiny_sd, "a red fox in the snow<lora:ink_v2:0.8> "
                                                           "<lora:peft-style:0.5>"))
    again = openvino.generate(_request(photo, tiny_sd, "a red fox in the snow"))
    gap = np.abs(np.asarray(with_lora.images[0], float) - np.asarray(reference.images[0], float)).max()
    assert gap <= 2, gap
    assert np.abs(np.asarray(with_lora.images[0], float) - np.asarray(base.images[0], float)).max() > 2
    assert again.images[0].tobytes() == base.images[0].tobytes()
    assert not any("OpenVINO could not" in note for note in with_lora.notes)


@pytest.mark.slow  # 25 s of command-line subprocesses; CI runs it with -m slow
def test_the_command_line_registers_applies_and_reproduces_loras(tiny_sd, photo, lora_dir, tmp_path) -> None:
    """models add detects a LoRA; --lora adds its tag; reproduce finds the file by its hash after a rename."""
    import shutil

    from test_cli import assert_one_line_error, img2img

    folder = tmp_path / "my-loras"
    folder.mkdir()
    shutil.copy(lora_dir / "ink_v2.safetensors", folder / "ink_v2.safetensors")
    env = {"IMG2IMG_LORA_DIR": str(folder)}
    added = img2img("models", "add", "peft", str(lora_dir / "peft-style.safetensors"), env=env)
    assert added.returncode == 0 and "added peft: LoRA for a model 32 wide" in added.stdout, added.stderr
    assert "peft\tlora" in img2img("models", "list", env=env).stdout
    out = tmp_path / "fox.png"
    common = [str(photo), "a red fox", "--model", str(tiny_sd), "--steps", "4", "--seed", "5", "--size", "64x64"]
    made = img2img("run", *common, "--lora", "ink_v2:0.7", "--lora", "peft", "-o", str(out), env=env)
    assert made.returncode == 0, made.stderr
    info = img2img("info", str(out)).stdout
    assert "a red fox <lora:ink_v2:0.7> <lora:peft:1>" in info and 'Lora hashes: "ink_v2: ' in info

    (folder / "ink_v2.safetensors").rename(folder / "ink-renamed.safetensors")
    again = img2img("reproduce", str(out), "--source", str(photo), "--model", str(tiny_sd), "-o",
                    str(tmp_path / "again.png"), env=env)
    assert again.returncode == 0, again.stderr
    assert "LoRA ink_v2 is found by its hash as ink-renamed" in again.stderr
    assert Image.open(tmp_path / "again.png").tobytes() == Image.open(out).tobytes()
    (folder / "ink-renamed.safetensors").unlink()
    assert_one_line_error(img2img("reproduce", str(out), "--source", str(photo), "--model", str(tiny_sd), "-o",
                                  str(tmp_path / "third.png"), env=env),
                          "FILE should be made with a LoRA that is here: ink_v2")
    assert_one_line_error(img2img("run", *common, "--lora", "missing:1", env=env),
                          "PROMPT should be a LoRA registered", "'missing'")


def test_the_base_of_a_lora_or_embedding_is_read_from_its_shapes(tmp_path, monkeypatch) -> None:
    """SD 1.x, SD 2.x and SDXL files are told apart by their widths, without loading a model."""
    from safetensors.torch import save_file

    from img2img.engine.prompt_syntax import LoraTag
    from img2img.models.addons import detect
    from img2img.models.loras import resolve

    monkeypatch.setenv("IMG2IMG_LORA_DIR", str(tmp_path))
    block = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    for name, width, extra in (("sd15", 768, {}), ("sd21", 1024, {}),
                               ("xl", 2048, {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight":
                                             torch.zeros(4, 768)})):
        save_file({f"{block}.lora_down.weight": torch.zeros(4, width), f"{block}.lora_up.weight": torch.zeros(8, 4),
                   **extra}, str(tmp_path / f"{name}.safetensors"))
    assert [detect(tmp_path / f"{name}.safetensors").base for name in ("sd15", "sd21", "xl")] == [
        "SD 1.x", "SD 2.x", "SDXL"]
    save_file({"string_to_param": torch.zeros(2, 1024)}, str(tmp_path / "old-format.safetensors"))
    embedding = detect(tmp_path / "old-format.safetensors")
    assert (embedding.kind, embedding.base, embedding.vectors) == ("embedding", "SD 2.x", 2)
    assert resolve((LoraTag("sd15", 1.0),), {}, 768, False)[0].name == "sd15"
    with pytest.raises(InvalidArgument, match=r"prompt should be LoRAs for SD 1.x, the model in use, but got "
                                              r"'sd21 \(for SD 2.x\)'"):
        resolve((LoraTag("sd21", 1.0),), {}, 768, False)
    with pytest.raises(InvalidArgument, match=r"LoRAs for SDXL, the model in use, but got 'sd21 \(for SD 2.x\)'"):
        resolve((LoraTag("sd21", 1.0),), {}, 2048, True)


@pytest.mark.slow  # 23 s; CI runs it with -m slow
def test_everything_at_a_photos_size_on_the_default_backend(tiny_sd, loras, tmp_path, monkeypatch) -> None:
    """A LoRA, an embedding, a VAE of one's own and a long weighted prompt on a 130x97 photo, through OpenVINO
    (the default CPU backend), as PyTorch paints it."""
    pytest.importorskip("openvino")
    import shutil

    from safetensors.torch import save_file

    from tiny_models import square_photo

    photo = square_photo(tmp_path, "coffee")
    Image.open(photo).resize((130, 97), Image.LANCZOS).save(photo)
    (tmp_path / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(8))},
              str(tmp_path / "embeddings" / "crema.safetensors"))
    shutil.copytree(tiny_sd / "vae", tmp_path / "vaes" / "same-vae")
    monkeypatch.setenv("IMG2IMG_EMBEDDINGS_DIR", str(tmp_path / "embeddings"))
    monkeypatch.setenv("IMG2IMG_VAE_DIR", str(tmp_path / "vaes"))
    prompt = "a cup of coffee, (crema:1.1), " + ", ".join(f"detail {n} in the foam" for n in range(20)) + \
             " <lora:locon:0.7>"
    request = GenerationRequest(source=photo, prompt=prompt, model=str(tiny_sd), strength=0.6, steps=6, seed=4,
                                vae="same-vae")
    results = {backend: Engine(device="cpu", dtype="float32", backend=backend).generate(request)
               for backend in ("torch", "openvino")}
    fast, reference = results["openvino"], results["torch"]
    assert fast.images[0].size == (130, 97)
    assert not any("OpenVINO could not" in note for note in fast.notes), fast.notes
    gap = np.abs(np.asarray(fast.images[0], float) - np.asarray(reference.images[0], float)).max()
    assert gap <= 2, gap
    record = fast.record
    assert [lora["name"] for lora in record.loras] == ["locon"] and record.embeddings[0]["name"] == "crema"
    assert record.vae_sha256 is not None
