"""A VAE of the user's choosing in place of the model's own (A1111's ``sd_vae``), such as the ft-MSE VAE.

A VAE is a diffusers ``AutoencoderKL`` folder or a single ``.safetensors`` file in the original or diffusers key
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


def vae_path(reference: str, registered: dict[str, str]) -> Path:
    """A VAE's folder or file: a path that exists (library, command line), else a name."""
    path = Path(reference).expanduser()
    if path.exists() and (path.is_dir() or path.suffix == ".safetensors"):
        found = path
    else:
        found = addons.find("vae", reference, registered, "vae")
    info = addons.detect(found)
    if info is None or info.kind != "vae":
        raise InvalidArgument("vae", "a VAE: an AutoencoderKL folder or a .safetensors VAE", str(reference))
    return found


def load_vae(path: Path, dtype: Any, device: str, model_config: dict[str, Any]) -> Any:
    """The VAE at ``path`` on ``device`` in ``dtype``, with the model's scaling factor (from ``model_config``, the
    model's own VAE config, which also shapes a single file)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    config = {key: value for key, value in dict(model_config).items() if not key.startswith("_")}
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
