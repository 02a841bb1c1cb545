"""Step caching: DeepCache (Ma, Fang and Wang, 2023) on our own loop, the opt-in ``cache_steps``.

A UNet's deep features change slowly from one denoising step to the next, while its outermost blocks carry the
detail. With ``cache_steps`` N, every N-th step (the first included) runs the whole UNet and keeps the features
that enter its last layer; the steps between run only ``conv_in``, that last layer and the output convolutions
(DeepCache's shallowest branch) and take the kept features for everything deeper. The result is an approximation
(its PSNR against the full computation is in bench/README.md) and is recorded.

Both backends run it: a PyTorch UNet through the functions below, the OpenVINO stand-in through two graphs of its
own (``img2img.models.ov_step_cache``), whichever ``pipeline.unet`` is (``deep`` and ``shallow`` methods).
"""

from __future__ import annotations

from typing import Any

import torch


class StepCache:
    """One image's denoising with the UNet's deep features kept between full steps."""

    def __init__(self, unet: Any, every: int) -> None:
        self.unet, self.every = unet, every
        self.feature: torch.Tensor | None = None
        self.full_steps = 0

    def __call__(self, index: int, sample: torch.Tensor, timestep: torch.Tensor, **inputs: Any) -> torch.Tensor:
        """The UNet's prediction at the loop's step ``index`` (0 for the first step that runs)."""
        batch = sample.shape[0]
        if self.feature is None or index % self.every == 0 or self.feature.shape[0] != batch:
            self.full_steps += 1
            if hasattr(self.unet, "deep"):
                output, self.feature = self.unet.deep(sample, timestep, **inputs)
            else:
                output, self.feature = deep(self.unet, sample, timestep, **inputs)
            return output
        if hasattr(self.unet, "shallow"):
            return self.unet.shallow(sample, timestep, self.feature, **inputs)
        return shallow(self.unet, sample, timestep, self.feature, **inputs)


def deep(unet: Any, sample: torch.Tensor, timestep: torch.Tensor, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole UNet's prediction and the features that enter its last layer (before their skip connection)."""
    kept: list[torch.Tensor] = []
    skip_channels = unet.conv_in.out_channels  # the last layer's skip connection is conv_in's output

    def keep(_module: Any, args: tuple[Any, ...]) -> None:
        kept.append(args[0][:, :-skip_channels])

    handle = unet.up_blocks[-1].resnets[-1].register_forward_pre_hook(keep)
    try:
        output = unet(sample, timestep, return_dict=False, **inputs)[0]
    finally:
        handle.remove()
    return output, kept[0]


def shallow(unet: Any, sample: torch.Tensor, timestep: torch.Tensor, feature: torch.Tensor,
            encoder_hidden_states: torch.Tensor, timestep_cond: torch.Tensor | None = None,
            added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The UNet's prediction from its outermost layers alone, given the deep ``feature`` of a recent full step.

    The same computation as ``UNet2DConditionModel.forward`` for what it runs: the time (and SDXL's added)
    embedding, ``conv_in``, the last up block's last layer (its resnet on ``feature`` beside ``conv_in``'s output,
    then its attention where it has one) and the output convolutions. This is DeepCache's shallowest branch.
    """
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    added = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                               added_cond_kwargs=added_cond_kwargs)
    emb = emb + added if added is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    last = unet.up_blocks[-1]
    hidden = last.resnets[-1](torch.cat([feature, unet.conv_in(sample)], dim=1), emb)
    if getattr(last, "attentions", None):
        text = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                  added_cond_kwargs=added_cond_kwargs)
        hidden = last.attentions[-1](hidden, encoder_hidden_states=text, return_dict=False)[0]
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)
