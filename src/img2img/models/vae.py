"""A VAE of the user's choosing in place of the model's own (A1111's ``sd_vae``), such as the ft-MSE VAE, or a
tiny autoencoder (TAESD, TAESDXL: ``--vae taesd``) that encodes and decodes in a fraction of the time, approximately.

A VAE is a diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` folder, a TAESD encoder and decoder pair as their
author ships them (ComfyUI's ``vae_approx`` files), or a single ``.safetensors`` file in the original or diffusers key
layout (found by name as ``img2img.models.addons`` finds add-ons, or by path in the library and the command line).
A single file carries no config: it is read with the model's own VAE config (its key layout converted by
diffusers' single-file conversion), and every VAE runs with the model's latent scaling factor, as A1111 does. It
is loaded once per weights and model VAE config (the engine's part cache) and handed to the pipeline for one run
only; the cached pipeline gets its own VAE back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from img2img.errors import InvalidArgument, ModelError
from img2img.models import addons

# Tiny autoencoders by their usual names, found in the Hugging Face cache when no folder of that name is.
TINY_REPOS = {"taesd": "madebyollin/taesd", "taesdxl": "madebyollin/taesdxl"}


def vae_path(reference: str, registered: dict[str, str]) -> Path:
    """A VAE's folder or file: a path that exists (library, command line), else a name, else a repo id in the
    Hugging Face cache (``taesd`` and ``taesdxl`` mean madebyollin's)."""
    from img2img.models.detect import REPO_ID, find_hf_cache_snapshot

    path = Path(reference).expanduser()
    if path.exists() and (path.is_dir() or path.suffix == ".safetensors"):
        found = path
    else:
        try:
            found = addons.find("vae", reference, registered, "vae")
        except InvalidArgument:
            repo = TINY_REPOS.get(reference, reference)
            snapshot = find_hf_cache_snapshot(repo) if REPO_ID.match(repo) else None
            if snapshot is None and reference in TINY_REPOS:
                where = ", ".join(str(folder) for folder in addons.folders("vae"))
                raise InvalidArgument("vae", f"a {reference} folder in a VAE folder ({where}) or {repo} in the "
                                      "Hugging Face cache", reference) from None
            if snapshot is None:
                raise
            found = snapshot
    info = addons.detect(found)
    if info is None or info.kind != "vae":
        raise InvalidArgument("vae", "a VAE: an AutoencoderKL or AutoencoderTiny (TAESD) folder or a .safetensors VAE",
                              str(reference))
    return found


def is_tiny_file(path: Path) -> bool:
    """Whether the VAE at ``path`` is a tiny autoencoder (TAESD), from its config or its keys."""
    from safetensors import safe_open

    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            return '"AutoencoderTiny"' in config.read_text(encoding="utf-8", errors="replace")
        return addons.tiny_pair(path) is not None
    with safe_open(str(path), framework="pt") as handle:
        return "encoder.layers.0.weight" in handle.keys()  # noqa: SIM118 (a safetensors handle, not a dict)


def load_vae(path: Path, dtype: Any, device: str, model_config: dict[str, Any]) -> Any:
    """The VAE at ``path`` on ``device`` in ``dtype``, with the model's scaling factor (from ``model_config``, the
    model's own VAE config, which also shapes a single file). A tiny autoencoder keeps its own scale: its latents
    are the UNet's as they are."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    config = {key: value for key, value in dict(model_config).items() if not key.startswith("_")}
    if is_tiny_file(path):
        return _load_tiny(path, dtype, device)
    try:
        if path.is_dir():
            vae = AutoencoderKL.from_pretrained(path, torch_dtype=dtype)
        else:
            state = load_file(str(path))
            if "encoder.down_blocks.0.resnets.0.conv1.weight" not in state:  # the original layout
                state = convert_ldm_vae_checkpoint(state, config)
            vae = AutoencoderKL.from_config(config)
            vae.load_state_dict(state)
            vae = vae.to(dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"VAE {path.name} could not be loaded: {str(exc).splitlines()[0]}") from exc
    vae.register_to_config(scaling_factor=model_config["scaling_factor"])
    vae = vae.to(device)
    if device == "cpu":  # as the model's own VAE runs there (oneDNN's convolutions are fastest on NHWC)
        vae.to(memory_format=torch.channels_last)
    return vae


def _load_tiny(path: Path, dtype: Any, device: str) -> Any:
    """A tiny autoencoder (diffusers' AutoencoderTiny: TAESD, TAESDXL) from its folder or its single file."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    try:
        pair = addons.tiny_pair(path) if path.is_dir() and not (path / "config.json").is_file() else None
        if path.is_dir() and pair is None:
            vae = AutoencoderTiny.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        else:
            state = _pair_state(*pair) if pair else load_file(str(path))
            vae = AutoencoderTiny(latent_channels=state["decoder.layers.0.weight"].shape[1])
            vae.load_state_dict(state)
            vae = vae.to(dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"tiny VAE {path.name} could not be loaded: {str(exc).splitlines()[0]}") from exc
    vae = vae.to(device).eval()
    if device == "cpu":
        vae.to(memory_format=torch.channels_last)
    return vae


def _pair_state(encoder: Path, decoder: Path) -> dict[str, torch.Tensor]:
    """The author's encoder and decoder files as one AutoencoderTiny state: the same layers in the same order,
    except that the author's decoder starts with a parameterless clamp that diffusers' applies in code."""
    from safetensors.torch import load_file

    state = {f"encoder.layers.{key}": value for key, value in load_file(str(encoder)).items()}
    for key, value in load_file(str(decoder)).items():
        index, rest = key.split(".", 1)
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    return state


@contextmanager
def using(pipeline: Any, vae: Any | None) -> Iterator[None]:
    """``pipeline`` with ``vae`` in place of its own for the duration (None: its own)."""
    if vae is None:
        yield
        return
    unet_channels = pipeline.unet.config.in_channels
    if vae.config.latent_channels != unet_channels and unet_channels in (4, 16):
        raise InvalidArgument("vae", f"a VAE with {unet_channels} latent channels, as the model's",
                              f"{vae.config.latent_channels} channels")
    own = pipeline.vae
    object.__setattr__(pipeline, "vae", vae)  # plain assignment: diffusers would re-register the module
    try:
        yield
    finally:
        object.__setattr__(pipeline, "vae", own)
