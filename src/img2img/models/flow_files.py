"""Single-file SD 3.x and FLUX.1 checkpoints, as people download them.

A file holds the transformer in its authors' key layout and, depending on where it came from, the VAE and some
text encoders. The transformer's architecture is read from the tensors' shapes (SD 3 Medium, 3.5 Medium and 3.5
Large differ in depth, norms and extra attention); what a file leaves out comes from a diffusers folder of the
family (``--config``), which for FLUX.1 is always needed: its T5 tokenizer cannot be shipped with us.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from img2img.errors import ModelError
from img2img.models.detect import UNET_PREFIX, ModelFiles

VAE_PREFIXES = ("first_stage_model.", "vae.")
SD3_CLIP_KEYS = {"text_encoder": "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight",
                 "text_encoder_2": "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight"}
SD3_T5_KEY = "text_encoders.t5xxl.transformer.shared.weight"
FLUX_FOLDER_HINT = "the HF cache's snapshot of black-forest-labs/FLUX.1-dev or FLUX.1-schnell"
SD3_FOLDER_HINT = "the HF cache's snapshot of stabilityai/stable-diffusion-3-medium-diffusers"


def transformer_keys(shapes: dict[str, Any]) -> dict[str, Any]:
    """The transformer's entries by their names in the authors' layout: under ``model.diffusion_model.`` where
    the file has other parts too (SD 3's files, ComfyUI's), or the whole file (BFL's FLUX.1 files)."""
    prefixed = any(key.startswith(UNET_PREFIX) for key in shapes)
    return {key.removeprefix(UNET_PREFIX): value for key, value in shapes.items()
            if key.startswith(UNET_PREFIX) or not prefixed}


def _count(keys: dict[str, list[int]], prefix: str) -> int:
    return 1 + max((int(k.split(".")[1]) for k in keys if k.startswith(prefix)), default=-1)


def sd3_architecture(shapes: dict[str, list[int]], head_dim: int) -> dict[str, Any]:
    """The SD3Transformer2DModel arguments that a file's shapes determine. ``head_dim`` is the width of one
    attention head where the file does not show it (without q/k norms: SD 3 Medium's 64)."""
    keys = transformer_keys(shapes)
    hidden = keys["x_embedder.proj.weight"][0]
    norm = keys.get("joint_blocks.0.x_block.attn.ln_q.weight")
    head_dim = norm[0] if norm else head_dim
    return {
        "num_layers": _count(keys, "joint_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "caption_projection_dim": keys["context_embedder.weight"][0],
        "joint_attention_dim": keys["context_embedder.weight"][1],
        "pooled_projection_dim": keys["y_embedder.mlp.0.weight"][1],
        "pos_embed_max_size": math.isqrt(keys["pos_embed"][1]),
        "qk_norm": "rms_norm" if norm else None,
        "dual_attention_layers": tuple(sorted({int(k.split(".")[1]) for k in keys
                                               if k.startswith("joint_blocks.") and ".attn2." in k})),
    }


def flux_architecture(shapes: dict[str, list[int]]) -> dict[str, Any]:
    """The FluxTransformer2DModel arguments that a file's shapes determine ([dev] has a guidance input)."""
    keys = transformer_keys(shapes)
    hidden = keys["img_in.weight"][0]
    head_dim = keys["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    return {
        "num_layers": _count(keys, "double_blocks."),
        "num_single_layers": _count(keys, "single_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": keys["txt_in.weight"][1],
        "pooled_projection_dim": keys["vector_in.in_layer.weight"][1],
        "guidance_embeds": "guidance_in.in_layer.weight" in keys,
    }


def has_vae(shapes: dict[str, list[int]]) -> bool:
    return any(key.startswith(VAE_PREFIXES) for key in shapes)


def has_weights(folder: Path | None, part: str) -> bool:
    """Whether a diffusers folder holds ``part``'s weights (a config alone does not count)."""
    return folder is not None and any((folder / part).glob("*.safetensors"))


def check_parts(files: ModelFiles, shapes: dict[str, list[int]], folder: Path | None) -> None:
    """Refuse in one line a single file whose missing parts ``folder`` (the user's ``--config``) does not hold:
    SD 3's VAE and CLIP encoders where the file has none; everything but the transformer for FLUX.1."""
    if files.family.base == "flux":
        needed = {"vae": "VAE", "text_encoder": "CLIP-L", "text_encoder_2": "T5"}
        lacking = [label for part, label in needed.items() if not has_weights(folder, part)]
        if folder is not None and not (folder / "transformer" / "config.json").is_file():
            lacking.append("transformer/config.json")
        if lacking:
            where = "no --config" if folder is None else f"--config {folder} has no {', '.join(lacking)}"
            raise ModelError(f"model {files.name} is a single-file FLUX.1 checkpoint, whose VAE, CLIP-L and T5 "
                             f"(with their tokenizers) come from a FLUX.1 diffusers folder, but it has {where}: "
                             f"pass --config FOLDER, e.g. {FLUX_FOLDER_HINT}")
        return
    if not has_vae(shapes) and not has_weights(folder, "vae"):
        raise _missing(files, "VAE", SD3_FOLDER_HINT)
    if any(key not in shapes and not has_weights(folder, part) for part, key in SD3_CLIP_KEYS.items()):
        raise _missing(files, "text encoders (CLIP-L and CLIP-G)", SD3_FOLDER_HINT)


def sd3_components(files: ModelFiles, shapes: dict[str, list[int]], configs: Path, user_folder: bool, t5: bool,
                   dtype: torch.dtype) -> dict[str, Any]:
    """What ``StableDiffusion3Img2ImgPipeline.from_single_file`` needs beside the file: the transformer's
    architecture, the parts the file lacks read from the folder (diffusers' single-file loader looks there only for
    its own weight names, not transformers' ``model.safetensors``), and T5 left out unless a tokenizer for it
    exists and its weights are in the file or the folder."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    folder = configs if user_folder else None
    check_parts(files, shapes, folder)
    options: dict[str, Any] = sd3_architecture(shapes, _folder_head_dim(configs))
    t5 = t5 and sd3_has_t5(shapes, folder)
    from_folder = {"vae": (AutoencoderKL, not has_vae(shapes)),
                   "text_encoder": (CLIPTextModelWithProjection, SD3_CLIP_KEYS["text_encoder"] not in shapes),
                   "text_encoder_2": (CLIPTextModelWithProjection, SD3_CLIP_KEYS["text_encoder_2"] not in shapes),
                   "text_encoder_3": (T5EncoderModel, t5 and SD3_T5_KEY not in shapes)}
    for part, (component, lacking) in from_folder.items():
        if lacking:
            options[part] = component.from_pretrained(str(configs), subfolder=part, torch_dtype=dtype,
                                                      local_files_only=True)
    if not t5:
        options |= {"text_encoder_3": None, "tokenizer_3": None}  # runs without T5: zeros in its place
    return options


def sd3_has_t5(shapes: dict[str, list[int]], folder: Path | None) -> bool:
    """Whether a single SD 3 file can run with T5: its tokenizer in the folder, its weights there or in the file."""
    tokenizer = folder is not None and any((folder / "tokenizer_3").glob("*"))
    return tokenizer and (SD3_T5_KEY in shapes or has_weights(folder, "text_encoder_3"))


def flux_transformer(files: ModelFiles, configs: Path | None, dtype: torch.dtype) -> Any:
    """The transformer of a single-file FLUX.1 checkpoint (BFL's layout, bare or under ComfyUI's prefix), with
    the architecture its shapes give; the rest of the pipeline comes from ``configs``, a FLUX.1 folder."""
    from diffusers import FluxTransformer2DModel
    from diffusers.models.model_loading_utils import load_state_dict

    check_parts(files, {}, configs)
    state = transformer_keys(load_state_dict(str(files.path)))
    architecture = flux_architecture({key: list(value.shape) for key, value in state.items()})
    return FluxTransformer2DModel.from_single_file(flux_to_diffusers(state), config=str(configs),
                                                   subfolder="transformer", torch_dtype=dtype,
                                                   local_files_only=True, **architecture)


def match_flux_schedule(scheduler: Any, schnell: bool) -> None:
    """A [schnell] file runs on its own schedule (no shift) and a [dev] one shifts by image size, whichever of
    the two the folder beside it came from (BFL's and diffusers' settings for each)."""
    if schnell:
        scheduler.register_to_config(use_dynamic_shifting=False, shift=1.0)
    elif not scheduler.config.get("use_dynamic_shifting"):
        scheduler.register_to_config(use_dynamic_shifting=True, shift=3.0, base_shift=0.5, max_shift=1.15,
                                     base_image_seq_len=256, max_image_seq_len=4096)


def flux_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL's FLUX.1 transformer keys as diffusers names them, at any width (diffusers' own conversion assumes
    [dev]'s 3072): fused q/k/v split, the single blocks' fused q/k/v/MLP split, the final norm's shift and scale
    swapped."""
    out: dict[str, torch.Tensor] = {}
    renames = {"time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
               "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
               "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
               "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
               "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
               "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
               "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out"}
    double = {"img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
              "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
              "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
              "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
              "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
              "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2", "txt_mlp.0": "ff_context.net.0.proj",
              "txt_mlp.2": "ff_context.net.2", "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out"}
    single = {"modulation.lin": "norm.linear", "norm.query_norm.scale": "attn.norm_q.weight",
              "norm.key_norm.scale": "attn.norm_k.weight", "linear2": "proj_out"}
    hidden = state["img_in.weight"].shape[0]
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        if stem in renames:
            out[f"{renames[stem]}.{leaf}"] = value
        elif key.startswith("final_layer.adaLN_modulation.1."):
            shift, scale = value.chunk(2)
            out[f"norm_out.linear.{leaf}"] = torch.cat([scale, shift])
        elif key.startswith("double_blocks."):
            block, rest = _split_block(key)
            if rest in (f"img_attn.qkv.{leaf}", f"txt_attn.qkv.{leaf}"):
                names = ("to_q", "to_k", "to_v") if rest.startswith("img") else ("add_q_proj", "add_k_proj",
                                                                                "add_v_proj")
                for name, part in zip(names, value.chunk(3), strict=True):
                    out[f"transformer_blocks.{block}.attn.{name}.{leaf}"] = part
            else:
                out[f"transformer_blocks.{block}.{_renamed(rest, double)}"] = value
        elif key.startswith("single_blocks."):
            block, rest = _split_block(key)
            if rest.startswith("linear1."):
                q, k, v, mlp = value.split([hidden, hidden, hidden, value.shape[0] - 3 * hidden])
                for name, part in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", mlp)):
                    out[f"single_transformer_blocks.{block}.{name}.{leaf}"] = part
            else:
                out[f"single_transformer_blocks.{block}.{_renamed(rest, single)}"] = value
        else:
            raise ModelError(f"FLUX.1 checkpoint tensor {key} has no place in the transformer")
    return out


def _split_block(key: str) -> tuple[int, str]:
    _, block, rest = key.split(".", 2)
    return int(block), rest


def _renamed(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    raise ModelError(f"FLUX.1 checkpoint tensor {rest} has no place in the transformer")


def _folder_head_dim(configs: Path) -> int:
    import json

    return int(json.loads((configs / "transformer" / "config.json").read_text()).get("attention_head_dim", 64))


def _missing(files: ModelFiles, part: str, hint: str) -> ModelError:
    return ModelError(f"model {files.name}: its single file has no {part}; pass --config with a diffusers "
                      f"SD 3.x folder that holds them, e.g. {hint}")
