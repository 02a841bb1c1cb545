"""Single-file SD 3.x and FLUX.1 checkpoints as people download them: recognised, their architecture read from
their shapes, what they lack taken from a diffusers folder (``--config``) or refused in one line, and the same
pictures as the folders they were written from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flow_layout import flux_transformer_state, sd3_single_file, sd3_transformer_state
from img2img import Engine, GenerationRequest, ModelEntry, ModelRegistry
from img2img.errors import ModelError
from img2img.models.detect import file_shapes, inspect_model, max_working_side
from img2img.models.families import Family
from img2img.models.flow_files import flux_architecture, flux_to_diffusers, sd3_architecture


def _configs_only(folder: Path, target: Path) -> Path:
    """A diffusers folder without its weights: configs and tokenizers, as ``--config`` may hold them."""
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return target


def _picture(model: str, photo: Path, registry: ModelRegistry | None = None, **options: object) -> bytes:
    request = GenerationRequest(source=photo, prompt="a fox in the snow", strength=0.7, steps=4, seed=11,
                                model=model, **options)  # type: ignore[arg-type]
    return Engine(device="cpu", registry=registry).generate(request).images[0].tobytes()


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("models") / "tiny-sd3", single_file=True)


@pytest.fixture(scope="module")
def sd3_files(tiny_sd3: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from diffusers import StableDiffusion3Pipeline

    pipeline = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    folder = tmp_path_factory.mktemp("sd3-files")
    files = {"all": folder / "tiny_sd3_incl_clips_t5xxl.safetensors", "bare": folder / "tiny_sd3.safetensors",
             "transformer": folder / "tiny_sd3_transformer.safetensors"}
    save_file(sd3_single_file(pipeline), str(files["all"]))
    save_file(sd3_single_file(pipeline, clips=False, t5=False), str(files["bare"]))
    save_file(sd3_single_file(pipeline, vae=False, clips=False, t5=False), str(files["transformer"]))
    return files


def test_an_sd3_file_with_every_part_gives_the_folders_picture(sd3_files, tiny_sd3, photo, tmp_path) -> None:
    files = inspect_model(sd3_files["all"])
    assert files.layout == "single_file" and files.family == Family("sd3", prediction="flow")
    assert max_working_side(files) == max_working_side(inspect_model(tiny_sd3)) == 96 * 16
    registry = ModelRegistry()  # every weight from the file; the folder gives configs and T5's tokenizer
    registry.add(ModelEntry("file", str(sd3_files["all"]), config=str(_configs_only(tiny_sd3, tmp_path / "c"))))
    assert _picture("file", photo, registry) == _picture(str(tiny_sd3), photo)


def test_what_an_sd3_file_lacks_comes_from_the_folder_or_is_refused(sd3_files, tiny_sd3, photo, tmp_path) -> None:
    registry = ModelRegistry()
    configs = str(_configs_only(tiny_sd3, tmp_path / "c"))
    with pytest.raises(ModelError, match=r"^model bare: its single file has no text encoders \(CLIP-L and CLIP-G\); "
                                         r"pass --config with a diffusers SD 3.x folder that holds them"):
        registry.add(ModelEntry("bare", str(sd3_files["bare"]), config=configs))
    with pytest.raises(ModelError, match=r"^model vae: its single file has no VAE"):
        registry.add(ModelEntry("vae", str(sd3_files["transformer"])))
    folder = _picture(str(tiny_sd3), photo)
    for name in ("bare", "transformer"):  # the CLIPs (and T5, and the VAE) from a full folder
        registry.add(ModelEntry(name, str(sd3_files[name]), config=str(tiny_sd3)))
        assert _picture(name, photo, registry) == folder
    registry.add(ModelEntry("no-t5", str(sd3_files["all"]), config=str(tiny_sd3), t5=False))
    assert _picture("no-t5", photo, registry) != folder  # zeros for T5, as a folder saved without it
    no_tokenizer = tmp_path / "no-tokenizer"  # T5's weights are in the file, but nothing can read a prompt for it
    shutil.copytree(tiny_sd3, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer_3"))
    registry.add(ModelEntry("untokenized", str(sd3_files["all"]), config=str(no_tokenizer)))
    assert registry.get("bare").t5 and not registry.get("untokenized").t5  # listed as "without T5"
    assert _picture("untokenized", photo, registry) == _picture("no-t5", photo, registry)


@pytest.mark.parametrize("config", [
    {"num_layers": 24, "attention_head_dim": 64, "num_attention_heads": 24, "caption_projection_dim": 1536,
     "joint_attention_dim": 4096, "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "qk_norm": None,
     "dual_attention_layers": ()},  # SD 3 Medium
    {"num_layers": 24, "attention_head_dim": 64, "num_attention_heads": 24, "caption_projection_dim": 1536,
     "joint_attention_dim": 4096, "pooled_projection_dim": 2048, "pos_embed_max_size": 384, "qk_norm": "rms_norm",
     "dual_attention_layers": tuple(range(13))},  # SD 3.5 Medium
    {"num_layers": 38, "attention_head_dim": 64, "num_attention_heads": 38, "caption_projection_dim": 2432,
     "joint_attention_dim": 4096, "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "qk_norm": "rms_norm",
     "dual_attention_layers": ()},  # SD 3.5 Large
], ids=["sd3-medium", "sd3.5-medium", "sd3.5-large"])
def test_the_sd3_architecture_is_read_from_a_files_shapes(config: dict) -> None:
    """Full-size SD 3 transformers, built on the meta device (no memory), written in Stability's layout: the
    shapes give back each architecture, which the one shipped config (SD 3 Medium's) could not."""
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel(**config)
    state = sd3_transformer_state(model.state_dict(), config["num_layers"])
    shapes = {"model.diffusion_model." + key: list(value.shape) for key, value in state.items()}
    assert sd3_architecture(shapes, head_dim=64) == config


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-flux-dev")


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["bfl", "comfyui"])
def test_a_flux_file_gives_the_folders_picture(tiny_flux, photo, tmp_path, prefix) -> None:
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(tiny_flux, subfolder="transformer")
    path = tmp_path / "flux1-tiny-dev.safetensors"
    save_file(flux_transformer_state(transformer.state_dict(), prefix), str(path))
    assert inspect_model(path).family == Family("flux", prediction="flow")
    registry = ModelRegistry()
    with pytest.raises(ModelError, match=r"^model flux is a single-file FLUX.1 checkpoint, .* but it has no "
                                         r"--config: pass --config FOLDER"):
        registry.add(ModelEntry("flux", str(path)))
    configs = _configs_only(tiny_flux, tmp_path / "c")
    with pytest.raises(ModelError, match=r"--config .* has no VAE, CLIP-L, T5"):
        registry.add(ModelEntry("flux", str(path), config=str(configs)))
    for part in ("vae", "text_encoder", "text_encoder_2"):  # the folder without the transformer's weights
        shutil.copytree(tiny_flux / part, configs / part, dirs_exist_ok=True)
    registry.add(ModelEntry("flux", str(path), config=str(configs)))
    assert _picture("flux", photo, registry) == _picture(str(tiny_flux), photo)


def test_a_schnell_file_is_known_by_its_missing_guidance_input(tiny_flux, tmp_path) -> None:
    from diffusers import FluxTransformer2DModel

    state = FluxTransformer2DModel.from_pretrained(tiny_flux, subfolder="transformer").state_dict()
    state = {k: v for k, v in state.items() if "guidance_embedder" not in k}
    path = tmp_path / "flux1-tiny-schnell.safetensors"
    save_file(flux_transformer_state(state), str(path))
    assert inspect_model(path).family == Family("flux", prediction="flow", distillation="turbo")
    assert flux_architecture(file_shapes(path))["guidance_embeds"] is False
    kontext = tmp_path / "flux1-kontext-tiny.safetensors"
    shutil.copy(path, kontext)
    assert inspect_model(kontext).family.edit


def test_our_flux_conversion_is_diffusers_at_full_width() -> None:
    """Diffusers' own conversion (written for [dev]'s width of 3072) and ours agree tensor for tensor on a
    full-width file; each tensor one column wide, numbered so that any misplaced row shows."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    hidden, counter = 3072, iter(range(10**9))
    rows = {"img_in": hidden, "txt_in": hidden, "time_in.in_layer": hidden, "time_in.out_layer": hidden,
            "vector_in.in_layer": hidden, "vector_in.out_layer": hidden, "guidance_in.in_layer": hidden,
            "guidance_in.out_layer": hidden, "final_layer.linear": 64, "final_layer.adaLN_modulation.1": 2 * hidden}
    for stream in ("img", "txt"):
        rows |= {f"double_blocks.0.{stream}_mod.lin": 6 * hidden, f"double_blocks.0.{stream}_attn.qkv": 3 * hidden,
                 f"double_blocks.0.{stream}_attn.proj": hidden, f"double_blocks.0.{stream}_mlp.0": 4 * hidden,
                 f"double_blocks.0.{stream}_mlp.2": hidden}
    rows |= {"single_blocks.0.modulation.lin": 3 * hidden, "single_blocks.0.linear1": 7 * hidden,
             "single_blocks.0.linear2": hidden}
    state = {}
    for name, count in rows.items():
        for leaf, shape in (("weight", (count, 1)), ("bias", (count,))):
            state[f"{name}.{leaf}"] = torch.arange(count, dtype=torch.float32).reshape(shape) + next(counter) * 1e5
    for name in ("double_blocks.0.img_attn", "double_blocks.0.txt_attn", "single_blocks.0"):
        for norm in ("query_norm", "key_norm"):
            state[f"{name}.norm.{norm}.scale"] = torch.full((128,), float(next(counter)))
    ours = flux_to_diffusers(dict(state))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(state))
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
