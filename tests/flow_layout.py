"""Write diffusers SD 3 and FLUX.1 components back into their authors' single-file key layouts.

Tests use it to produce single files the way people download them (Stability's SD 3 files, BFL's and ComfyUI's
Flux files): the inverse of the conversion that diffusers' single-file loader (SD 3) and ours (Flux) perform.
"""

from __future__ import annotations

from typing import Any

import torch

from ldm_layout import vae_key

UNET = "model.diffusion_model."


def _swap(value: torch.Tensor) -> torch.Tensor:
    """The authors' adaptive norms give (shift, scale); diffusers' give (scale, shift)."""
    first, second = value.chunk(2)
    return torch.cat([second, first])


def sd3_transformer_state(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """An SD3Transformer2DModel's weights in Stability's MMDiT layout (without the file's prefix)."""
    out: dict[str, torch.Tensor] = {}
    fixed = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj": "x_embedder.proj",
             "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
             "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
             "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
             "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
             "context_embedder": "context_embedder", "proj_out": "final_layer.linear"}
    block = {"attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
             "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
             "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
             "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k",
             "attn2.to_out.0": "x_block.attn2.proj", "norm1.linear": "x_block.adaLN_modulation.1",
             "norm1_context.linear": "context_block.adaLN_modulation.1", "ff.net.0.proj": "x_block.mlp.fc1",
             "ff.net.2": "x_block.mlp.fc2", "ff_context.net.0.proj": "context_block.mlp.fc1",
             "ff_context.net.2": "context_block.mlp.fc2"}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        if key == "pos_embed.pos_embed":
            out["pos_embed"] = value
        elif stem in fixed:
            out[f"{fixed[stem]}.{leaf}"] = value
        elif stem == "norm_out.linear":
            out[f"final_layer.adaLN_modulation.1.{leaf}"] = _swap(value)
        elif key.startswith("transformer_blocks."):
            _, index, rest = key.split(".", 2)
            name, _, leaf = rest.rpartition(".")
            if name in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj",
                        "attn.add_v_proj", "attn2.to_q", "attn2.to_k", "attn2.to_v"):
                continue  # fused below
            if name == "norm1_context.linear" and int(index) == num_layers - 1:
                value = _swap(value)  # the last block's context norm is a final (shift, scale) one
            out[f"joint_blocks.{index}.{block[name]}.{leaf}"] = value
        else:
            raise KeyError(f"no MMDiT name for {key}")
    for index in range(num_layers):
        for attn, stream, names in (("attn", "x_block.attn", ("to_q", "to_k", "to_v")),
                                    ("attn", "context_block.attn", ("add_q_proj", "add_k_proj", "add_v_proj")),
                                    ("attn2", "x_block.attn2", ("to_q", "to_k", "to_v"))):
            for leaf in ("weight", "bias"):
                parts = [state.get(f"transformer_blocks.{index}.{attn}.{name}.{leaf}") for name in names]
                if parts[0] is not None:
                    out[f"joint_blocks.{index}.{stream}.qkv.{leaf}"] = torch.cat(parts)
    return out


def sd3_single_file(pipeline: Any, vae: bool = True, clips: bool = True, t5: bool = True) -> dict[str, torch.Tensor]:
    """An SD 3 pipeline as Stability's single files hold it: the transformer, and the VAE, both CLIP encoders and
    T5 where asked (sd3_medium.safetensors has the first two; ..._incl_clips_t5xxl all of them)."""
    transformer = pipeline.transformer
    out = {UNET + k: v for k, v in sd3_transformer_state(transformer.state_dict(),
                                                         transformer.config.num_layers).items()}
    if vae:
        blocks = len(pipeline.vae.config.block_out_channels)
        for key, value in pipeline.vae.state_dict().items():
            name = vae_key(key, blocks)
            if ".mid.attn_1." in name and name.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]
            out["first_stage_model." + name] = value
    encoders = {"clip_l": pipeline.text_encoder, "clip_g": pipeline.text_encoder_2} if clips else {}
    if t5:
        encoders["t5xxl"] = pipeline.text_encoder_3
    for name, encoder in encoders.items():
        for key, value in encoder.state_dict().items():
            out[f"text_encoders.{name}.transformer.{key}"] = value
    return {k: v.contiguous().clone() for k, v in out.items()}  # T5's tied embeddings saved twice, as files do


def flux_transformer_state(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A FluxTransformer2DModel's weights in BFL's layout (ComfyUI's files put ``model.diffusion_model.`` first)."""
    out: dict[str, torch.Tensor] = {}
    fixed = {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
             "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
             "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
             "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
             "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
             "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
             "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"}
    double = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
              "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0",
              "ff_context.net.2": "txt_mlp.2", "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj"}
    norms = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
             "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
    single = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
    single_norms = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        if stem in fixed:
            out[f"{fixed[stem]}.{leaf}"] = value
        elif stem == "norm_out.linear":
            out[f"final_layer.adaLN_modulation.1.{leaf}"] = _swap(value)
        elif key.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            kind, index, rest = key.split(".", 2)
            name, _, leaf = rest.rpartition(".")
            target = "double_blocks" if kind == "transformer_blocks" else "single_blocks"
            names, norm_names = (double, norms) if target == "double_blocks" else (single, single_norms)
            if name in norm_names:
                out[f"{target}.{index}.{norm_names[name]}.scale"] = value
            elif name in names:
                out[f"{target}.{index}.{names[name]}.{leaf}"] = value
        else:
            raise KeyError(f"no BFL name for {key}")
    blocks = {k.split(".")[1] for k in state if k.startswith("transformer_blocks.")}
    singles = {k.split(".")[1] for k in state if k.startswith("single_transformer_blocks.")}
    for index in blocks:
        for leaf in ("weight", "bias"):
            for stream, names in (("img_attn", ("to_q", "to_k", "to_v")),
                                  ("txt_attn", ("add_q_proj", "add_k_proj", "add_v_proj"))):
                out[f"double_blocks.{index}.{stream}.qkv.{leaf}"] = torch.cat(
                    [state[f"transformer_blocks.{index}.attn.{name}.{leaf}"] for name in names])
    for index in singles:
        for leaf in ("weight", "bias"):
            parts = [state[f"single_transformer_blocks.{index}.{name}.{leaf}"]
                     for name in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
            out[f"single_blocks.{index}.linear1.{leaf}"] = torch.cat(parts)
    return {prefix + k: v.contiguous() for k, v in out.items()}
