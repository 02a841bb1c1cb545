"""Recognise what a model reference points at, from its files alone, before any weight is loaded."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from img2img.errors import ModelNotFound, PickleRefused, UnknownModelFormat
from img2img.models.families import (
    Family,
    Prediction,
    base_from_cross_attention_dim,
    distillation_from_name,
    kind_from_channels,
)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Tensors whose presence tells the original (CompVis/Stability) key layout apart, family by family.
SDXL_TEXT_KEY = "conditioner.embedders.1.model.ln_final.weight"
SD2_TEXT_KEY = "cond_stage_model.model.ln_final.weight"
SD1_TEXT_KEY = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
UNET_PREFIX = "model.diffusion_model."
UNET_INPUT_KEY = f"{UNET_PREFIX}input_blocks.0.0.weight"  # (320, input channels, 3, 3)


@dataclass(frozen=True)
class ModelFiles:
    """A model on disk, recognised."""

    name: str
    path: Path
    layout: Literal["diffusers", "single_file"]
    family: Family
    pickled: bool  # weights are pickles (needs the explicit opt-in)


def find_hf_cache_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of ``repo_id`` in the Hugging Face cache, without touching the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    # Read at call time: huggingface_hub reads HF_HUB_CACHE once, when it is first imported.
    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache))
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None


def inspect_model(
    path: Path, *, name: str | None = None, allow_pickle: bool = False, prediction: Prediction | None = None
) -> ModelFiles:
    """Recognise the model at ``path`` (a diffusers folder or a single checkpoint file)."""
    if not path.exists():
        raise ModelNotFound(f"model path should exist, but {path} does not exist")
    name = name or path.stem
    if path.is_dir():
        return _inspect_folder(path, name, allow_pickle, prediction)
    return _inspect_file(path, name, allow_pickle, prediction)


def _inspect_folder(path: Path, name: str, allow_pickle: bool, prediction: Prediction | None) -> ModelFiles:
    index_path = path / "model_index.json"
    if not index_path.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise UnknownModelFormat(
            f"model folder should be a diffusers pipeline with a model_index.json, but {path} holds: {found}"
        )
    index = _read_json(index_path)
    pipeline_class = str(index.get("_class_name", ""))
    if pipeline_class.startswith("StableDiffusion3"):
        return _inspect_sd3_folder(path, name, allow_pickle)
    if pipeline_class.startswith("Flux"):
        return _inspect_flux_folder(path, name, allow_pickle, pipeline_class)
    unet = _read_json(path / "unet" / "config.json")
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    if "XL" in pipeline_class:
        base = "sdxl"
    elif pipeline_class.startswith(("StableDiffusion", "LatentConsistencyModel")):
        text_encoder = _read_json(path / "text_encoder" / "config.json")
        base = base_from_cross_attention_dim(int(unet.get("cross_attention_dim", 0))) or (
            "sd2" if text_encoder.get("hidden_act") == "gelu" else "sd1"
        )
    else:
        raise UnknownModelFormat(
            f"model should be a Stable Diffusion 1.x, 2.x, SDXL or 3.x or a FLUX.1 pipeline, but {path} is a "
            f"{pipeline_class or 'pipeline of unknown class'}"
        )
    if base == "sdxl" and index.get("text_encoder_2") in (None, [None, None]):
        raise UnknownModelFormat(f"model should have two text encoders, but {path} looks like an SDXL refiner")
    lcm = scheduler.get("_class_name") == "LCMScheduler" or unet.get("time_cond_proj_dim") is not None
    distillation = "lcm" if lcm else distillation_from_name(name, str(path))
    family = Family(
        base=base,  # type: ignore[arg-type]
        prediction=prediction or scheduler.get("prediction_type", "epsilon"),
        distillation=distillation,
        **kind_from_channels(int(unet.get("in_channels", 4)), base, str(path)),  # type: ignore[arg-type]
    )
    weights = list((path / "unet").glob("*.safetensors"))
    pickled = not weights
    if pickled and not allow_pickle:
        raise PickleRefused(
            f"model weights should be .safetensors, but {path / 'unet'} has only pickled weights; "
            "pickles can run code when loaded: pass --allow-pickle only if you trust the file"
        )
    return ModelFiles(name=name, path=path, layout="diffusers", family=family, pickled=pickled)


def _inspect_sd3_folder(path: Path, name: str, allow_pickle: bool) -> ModelFiles:
    """An SD 3 or 3.5 diffusers folder: a flow-matching transformer (the T5 encoder may be left out)."""
    transformer = _read_json(path / "transformer" / "config.json")
    if int(transformer.get("in_channels", 16)) != 16:
        raise UnknownModelFormat(f"model's transformer should take 16 latent channels, but {path} takes "
                                 f"{transformer.get('in_channels')}")
    if not list((path / "transformer").glob("*.safetensors")) and not allow_pickle:
        raise PickleRefused(
            f"model weights should be .safetensors, but {path / 'transformer'} has only pickled weights; "
            "pickles can run code when loaded: pass --allow-pickle only if you trust the file"
        )
    family = Family(base="sd3", prediction="flow", distillation=distillation_from_name(name, str(path)))
    pickled = not list((path / "transformer").glob("*.safetensors"))
    return ModelFiles(name=name, path=path, layout="diffusers", family=family, pickled=pickled)


def _inspect_flux_folder(path: Path, name: str, allow_pickle: bool, pipeline_class: str) -> ModelFiles:
    """A FLUX.1 diffusers folder: [dev] takes guidance as an input, [schnell] does not; Kontext (an edit model)
    is [dev]'s architecture, known by its pipeline class."""
    if pipeline_class not in ("FluxPipeline", "FluxImg2ImgPipeline", "FluxKontextPipeline"):
        raise UnknownModelFormat(f"model should be a FLUX.1 [dev], [schnell] or Kontext pipeline, but {path} is a "
                                 f"{pipeline_class}, which is not supported yet")
    transformer = _read_json(path / "transformer" / "config.json")
    weights = list((path / "transformer").glob("*.safetensors"))
    if not weights and not allow_pickle:
        raise PickleRefused(
            f"model weights should be .safetensors, but {path / 'transformer'} has only pickled weights; "
            "pickles can run code when loaded: pass --allow-pickle only if you trust the file"
        )
    schnell = not transformer.get("guidance_embeds", False)
    family = Family(base="flux", prediction="flow", distillation="turbo" if schnell else None,
                    edit=pipeline_class == "FluxKontextPipeline")
    return ModelFiles(name=name, path=path, layout="diffusers", family=family, pickled=not weights)


def max_working_side(files: ModelFiles) -> int | None:
    """The longest side in pixels a model can paint, where its architecture has one: SD 3's transformer places
    its patches on a grid of ``pos_embed_max_size`` (192 patches of 2x2 latents: 3072 px); None for UNets."""
    if files.family.base != "sd3":
        return None
    if files.layout == "single_file":  # the grid's positions, as the file stores them
        positions = file_shapes(files.path).get(f"{UNET_PREFIX}pos_embed")
        return math.isqrt(positions[1]) * 2 * 8 if positions else None
    config = _read_json(files.path / "transformer" / "config.json")
    grid = config.get("pos_embed_max_size")
    return int(grid) * int(config.get("patch_size", 2)) * 8 if grid else None


def _inspect_file(path: Path, name: str, allow_pickle: bool, prediction: Prediction | None) -> ModelFiles:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefused(
                f"checkpoint should be a .safetensors file, but {path.name} is a pickle ({suffix}), which can "
                "run code when loaded: pass --allow-pickle only if you trust the file"
            )
        shapes, metadata = _pickle_shapes(path), {}
    elif suffix == ".safetensors":
        shapes, metadata = _safetensors_shapes(path)
    else:
        raise UnknownModelFormat(
            f"model file should be .safetensors (or a pickle with --allow-pickle), but got {path.name}"
        )
    family = _family_from_keys(path, shapes, metadata, prediction, name)
    return ModelFiles(name=name, path=path, layout="single_file", family=family, pickled=suffix != ".safetensors")


def _family_from_keys(
    path: Path, shapes: dict[str, list[int]], metadata: dict[str, str], prediction: Prediction | None, name: str
) -> Family:
    title = " ".join(metadata.get(k, "") for k in ("modelspec.title", "modelspec.architecture"))
    transformer = _single_file_transformer(shapes)
    if transformer == "sd3":
        return Family(base="sd3", prediction="flow", distillation=distillation_from_name(name, title))
    if transformer == "flux":  # [schnell] has no guidance input; Kontext is [dev]'s architecture, known by name
        schnell = not any(key.removeprefix(UNET_PREFIX).startswith("guidance_in.") for key in shapes)
        return Family(base="flux", prediction="flow", distillation="turbo" if schnell else None,
                      edit="kontext" in f"{name} {title}".lower())
    if SDXL_TEXT_KEY in shapes:
        base = "sdxl"
    elif SD2_TEXT_KEY in shapes:
        base = "sd2"
    elif SD1_TEXT_KEY in shapes:
        base = "sd1"
    else:
        cross = [s[-1] for k, s in shapes.items() if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")]
        base = base_from_cross_attention_dim(cross[0]) if cross else None
        if base is None:
            unet_keys = sum(k.startswith(UNET_PREFIX) for k in shapes)
            raise UnknownModelFormat(
                f"checkpoint should hold a Stable Diffusion UNet and text encoder in the original key layout, but "
                f"{path.name} has {len(shapes)} tensors, {unet_keys} of them UNet weights, and no text encoder "
                f"of SD 1.x, 2.x or SDXL (first keys: {', '.join(sorted(shapes)[:3]) or 'none'})"
            )
    declared = metadata.get("modelspec.prediction_type", "").lower()
    if prediction is None:
        if declared in ("v", "v_prediction"):
            prediction = "v_prediction"
        elif declared in ("epsilon", "eps") or base != "sd2" or "base" in name.lower():
            prediction = "epsilon"
        else:
            prediction = "v_prediction"  # most SD 2.x checkpoints are the 768-px v-prediction kind
    channels = shapes.get(UNET_INPUT_KEY, [0, 4])[1]
    return Family(base=base, prediction=prediction, distillation=distillation_from_name(name, title),  # type: ignore[arg-type]
                  **kind_from_channels(channels, base, path.name))  # type: ignore[arg-type]


def _single_file_transformer(shapes: dict[str, list[int]]) -> str | None:
    """The family of a single-file transformer checkpoint: "sd3" (SD 3's joint blocks) or "flux" (Flux's
    double-stream blocks, in BFL's or ComfyUI's layout), or None."""
    for key in shapes:
        name = key.removeprefix(UNET_PREFIX)
        if name.startswith("joint_blocks."):
            return "sd3"
        if name.startswith("double_blocks."):
            return "flux"
    return None


def file_shapes(path: Path) -> dict[str, list[int]]:
    """Every tensor's shape in a checkpoint file, read without loading the weights."""
    return _safetensors_shapes(path)[0] if path.suffix.lower() == ".safetensors" else _pickle_shapes(path)


def _safetensors_shapes(path: Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
            return shapes, dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own untyped errors for damaged headers
        raise UnknownModelFormat(f"checkpoint should be a readable .safetensors file, but {path.name}: {exc}") from exc


def _pickle_shapes(path: Path) -> dict[str, list[int]]:
    import torch

    # weights_only keeps the unpickler from running arbitrary code even after the user opted in.
    state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UnknownModelFormat(f"{path} should be a JSON config, but it could not be read: {exc}") from exc
    return data if isinstance(data, dict) else {}
