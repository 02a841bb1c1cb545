"""``quantize="int8"`` for the UNet: its matrix multiplies in 8 bits, weights and activations, calibrated.

The scheme optimum-intel calls hybrid for diffusion models: NNCF's post-training quantization of the UNet graph's
MatMuls only (both operands quantized, so the CPU runs them as 8-bit multiply-adds: VNNI where it has it, AVX2's
8-bit multiply-add otherwise), with every other operation (convolutions, normalisations, element-wise ones) left in
the variant's precision. The activations' ranges come from a short denoising run that the conversion records itself
with the float graph it has just saved: one prompt with guidance, from pure noise, ``CALIBRATION_STEPS`` steps of
Euler at a 384 px working size (a smaller size than a real run's keeps the statistics' memory down; the ranges
do not depend on the size). The result is cached with the model's other IR, by the weights' hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

CALIBRATION_STEPS = 6
CALIBRATION_LATENT_SIDE = 48  # latent pixels: a 384x384 image
CALIBRATION_PROMPT = ("a detailed photograph of a person in a city street, soft light", "blurry, low quality")
CALIBRATION_GUIDANCE = 7.0
# Every operation type but the matrix multiply: what NNCF leaves in the variant's precision.
KEPT_PRECISION = ["Convolution", "GroupConvolution", "GroupNormalization", "MVN", "Multiply", "Add", "Subtract",
                  "Divide", "Power", "Sqrt", "Softmax", "Interpolate", "Concat", "Reshape", "Transpose"]


def quantize_unet(xml: Path, pipeline: Any, variant: str) -> Any:
    """The UNet graph at ``xml`` (just saved in float precision) with its matrix multiplies quantized, calibrated
    on inputs recorded from ``pipeline``'s own text encoder(s) and scheduler."""
    import nncf  # an optional dependency; choose_placement checked that it is installed
    import openvino as ov

    core = ov.Core()
    inputs = calibration_inputs(core.compile_model(core.read_model(xml), "CPU", _options(variant)), pipeline)
    return nncf.quantize(core.read_model(xml), nncf.Dataset(inputs), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(inputs),
                         ignored_scope=nncf.IgnoredScope(types=KEPT_PRECISION, validate=False),
                         advanced_parameters=nncf.AdvancedQuantizationParameters(smooth_quant_alpha=-1))


def calibration_inputs(compiled: Any, pipeline: Any) -> list[list[np.ndarray]]:
    """The UNet's inputs at each step of a short guided denoising run through ``compiled``, in the graph's order
    (``ov_runtime.unet_input_shapes``)."""
    from diffusers import EulerDiscreteScheduler

    from img2img.models.ov_runtime import unet_extras

    config = dict(pipeline.unet.config)
    xl, conditioned = unet_extras(config)
    side = CALIBRATION_LATENT_SIDE
    own = _text_inputs(pipeline, xl, conditioned, side * pipeline.vae_scale_factor)
    scheduler = EulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    scheduler.set_timesteps(CALIBRATION_STEPS)
    generator = torch.Generator().manual_seed(0)
    channels = int(pipeline.vae.config.latent_channels)
    latents = torch.randn(1, channels, side, side, generator=generator) * scheduler.init_noise_sigma
    recorded = []
    for timestep in scheduler.timesteps:
        sample = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)
        extra = int(config["in_channels"]) - channels  # an inpainting UNet's mask and masked source: none
        if extra > 0:
            sample = torch.cat([sample, torch.zeros(2, extra, side, side)], dim=1)
        inputs = [sample.numpy().astype(np.float32), np.asarray(float(timestep), dtype=np.float32), *own]
        recorded.append(inputs)
        prediction = torch.from_numpy(np.array(compiled(inputs)[0]))
        unconditional, conditional = prediction.chunk(2)
        guided = unconditional + CALIBRATION_GUIDANCE * (conditional - unconditional)
        latents = scheduler.step(guided, timestep, latents).prev_sample
    return recorded


def _text_inputs(pipeline: Any, xl: bool, conditioned: bool, pixels: int) -> list[np.ndarray]:
    """The prompt's inputs for a guided batch (unconditional first): embeddings, SDXL's pooled embeddings and
    size ids, LCM's guidance embedding."""
    prompt, negative = CALIBRATION_PROMPT
    with torch.no_grad():
        if xl:
            embeds, negative_embeds, pooled, negative_pooled = pipeline.encode_prompt(
                prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                negative_prompt=negative)
        else:
            embeds, negative_embeds = pipeline.encode_prompt(prompt, "cpu", 1, True, negative)
    arrays = [torch.cat([negative_embeds, embeds]).float().numpy()]
    if xl:
        arrays.append(torch.cat([negative_pooled, pooled]).float().numpy())
        arrays.append(np.asarray([[pixels, pixels, 0, 0, pixels, pixels]] * 2, dtype=np.float32))
    if conditioned:
        scale = torch.tensor([CALIBRATION_GUIDANCE - 1.0])
        embedding = pipeline.get_guidance_scale_embedding(scale, embedding_dim=pipeline.unet.config.time_cond_proj_dim)
        arrays.append(torch.cat([embedding] * 2).float().numpy())
    return arrays


def _options(variant: str) -> dict[str, Any]:
    from img2img.models.ov_runtime import _threads

    return {"INFERENCE_PRECISION_HINT": variant.split("-")[0], **_threads()}
