"""The img2img denoising run, in the stages a reader expects: encode the prompt, plan the steps, encode the
source, and for each seed prepare the noised latent, denoise it and decode it. What acts inside the loop is a
conditioner (``img2img.engine.conditioning``): the prompt's, and any the request adds.

It works on the components of a loaded diffusers pipeline (UNet, VAE, text encoders) and reuses the pipeline's
own prompt encoding and image processor, so it matches ``StableDiffusion(XL)Img2ImgPipeline`` step for step;
what it adds is the strength contract of ``img2img.engine.strength``, per-image seeds and progress reporting.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from img2img.engine.conditioning import Begin, Conditioner, StartLatents, Step, TextConditioner, unet_inputs
from img2img.engine.denoiser import denoiser, is_flux, is_transformer
from img2img.engine.flux import encode_text_flux, guidance_input, schedule_options
from img2img.engine.samplers import add_noise, build_scheduler, is_flow_config
from img2img.engine.seeds import cpu_generator
from img2img.engine.step_cache import StepCache
from img2img.engine.strength import StepPlan, plan_steps
from img2img.engine.text import encode_text
from img2img.engine.text_sd3 import encode_text_sd3
from img2img.engine.tiling import OVERLAP_PIXELS, TILE_PIXELS, needs_tiles, tiled_apply
from img2img.engine.token_merge import merging_tokens
from img2img.models import mapped_weights
from img2img.models.memory import DIFFUSION_BYTES_PER_PIXEL, available_memory

# on_step(image_index, step_done, steps_total): called after every model evaluation; may raise to stop the run.
StepCallback = Callable[[int, int, int], None]
LatentsCallback = Callable[[int, torch.Tensor], None]  # (image index, latents after a step)


@dataclass(frozen=True)
class DiffusionJob:
    """A request with every default filled in, ready to run."""

    prompt: str
    negative_prompt: str
    strength: float  # strictly above 0: strength 0 never reaches the sampler
    guidance_scale: float
    steps: int
    sampler: str
    seeds: tuple[int, ...]
    steps_mode: str = "diffusers"
    conditions: tuple[Conditioner, ...] = ()  # beside the prompt's own
    prompt_syntax: str = "a1111"  # how the prompts are read (img2img.engine.text)
    clip_skip: int = 1
    cache_steps: int = 1  # step caching (img2img.engine.step_cache): the whole UNet every N steps
    merge_tokens: float = 0.0  # token merging (img2img.engine.token_merge): the share of tokens merged
    merge_levels: int = 1  # and at how many of the UNet's levels


@dataclass(frozen=True)
class DiffusionOutput:
    images: np.ndarray  # float32, (N, H, W, 3) in [0, 1], at the working size
    steps_run: int
    start_sigma: float
    seconds: tuple[float, ...]  # per image; the first includes encoding the prompt and the source


class DiffusionSession:
    """One source at its working size on one pipeline, for any number of jobs.

    The source's VAE encoding and each distinct prompt's text encoding are computed once and reused by every job
    of the session: a sweep over strengths, guidance scales, seeds, steps or samplers encodes nothing twice.
    """

    def __init__(self, pipeline: Any, source: Image.Image) -> None:
        self.pipeline = pipeline
        self.source = source  # already at the working size, multiples of 8
        self._encoded: dict[str, Any] = {}  # what conditioners had encoded, by name
        self._texts: dict[tuple[str, str, bool, str, int], TextConditioner] = {}

    @torch.inference_mode()
    def run(self, job: DiffusionJob, on_step: StepCallback | None = None,
            on_latents: LatentsCallback | None = None) -> DiffusionOutput:
        """Run ``job``: one image per seed, each from its own CPU generator."""
        started = time.perf_counter()
        pipeline = self.pipeline
        device = denoiser(pipeline).device
        width, height = self.source.size

        # 1. Guidance and prompt.
        config = denoiser(pipeline).config  # LCM and Flux take guidance as an input, in one row
        guided = job.guidance_scale > 1 and config.time_cond_proj_dim is None and not getattr(
            config, "distilled_guidance", False)
        text = self.text(job, guided)

        # 2. Steps: where strength becomes timesteps.
        plan = self.plan(job)

        # 3. The source's latent distribution, encoded once per session (a mask needs it even at strength 1).
        conditioners = (text, *job.conditions)
        needs_source = not plan.from_pure_noise or any(c.needs_source_latents() for c in job.conditions)
        latent_dist = self.latent_dist() if needs_source else None

        images, seconds, steps_run, start_sigma = [], [], 0, 0.0
        with contextlib.ExitStack() as attached:  # what conditioners put on the model, taken off after the run
            for conditioner in job.conditions:
                attached.enter_context(conditioner.attach(pipeline))
            if job.merge_tokens > 0:
                attached.enter_context(token_merging(pipeline.unet, job.merge_tokens, job.merge_levels))
            for index, seed in enumerate(job.seeds):
                generator = cpu_generator(seed)
                scheduler = build_scheduler(job.sampler, dict(pipeline.scheduler.config), seed)
                timesteps = set_timesteps(scheduler, plan, device, self.schedule_options(scheduler, plan))
                start_sigma = sigma_at(scheduler, plan.start_index * scheduler.order, timesteps[0])
                steps_run = plan.steps_to_run

                # 4. The starting latent: the source's, noised to the first timestep, or pure noise at strength 1.
                start = prepare_latents(pipeline, scheduler, latent_dist, timesteps[0], generator, (height, width),
                                        plan.from_pure_noise)
                bound = self.begin(conditioners, scheduler, timesteps[0], generator, start)

                # 5. Denoise.
                def report(done: int, total: int, latents: torch.Tensor, index: int = index) -> None:
                    if on_step:
                        on_step(index, done, total)
                    if on_latents:
                        on_latents(index, latents)

                latents = denoise(pipeline, scheduler, timesteps, bound[1], bound[0], job.guidance_scale, guided,
                                  generator, report, job.cache_steps)

                # 6. Decode.
                images.append(decode(pipeline, latents))
                seconds.append(time.perf_counter() - started)
                started = time.perf_counter()
        return DiffusionOutput(np.concatenate(images), steps_run, start_sigma, tuple(seconds))

    def plan(self, job: DiffusionJob) -> StepPlan:
        """Where ``job``'s strength becomes steps on this pipeline's schedule (``img2img.engine.strength``)."""
        train_steps = int(self.pipeline.scheduler.config.get("num_train_timesteps", 1000))
        flow = is_flow_config(dict(self.pipeline.scheduler.config))
        return plan_steps(job.steps, job.strength, job.steps_mode, train_steps, flow)  # type: ignore[arg-type]

    def schedule_options(self, scheduler: Any, plan: StepPlan) -> dict[str, Any]:
        """A Flux schedule's own sigmas and size shift (``img2img.engine.flux``); nothing for other models."""
        if not is_flux(self.pipeline):
            return {}
        scale = self.pipeline.vae_scale_factor
        latent = (self.source.size[1] // scale, self.source.size[0] // scale)
        return schedule_options(scheduler, plan.schedule_steps, latent)

    def latent_dist(self) -> Any:
        """The source's latent distribution (``encode``'s "source", which conditioners may ask for too)."""
        return self.encode("source", source_pixels(self.pipeline, self.source))

    def begin(self, conditioners: tuple[Conditioner, ...], scheduler: Any, first_timestep: torch.Tensor,
              generator: torch.Generator, start: StartLatents) -> tuple[tuple[Conditioner, ...], StartLatents]:
        """Each conditioner bound to one image's start, in order; the start as they leave it."""
        bound: list[Conditioner] = []
        for conditioner in conditioners:
            text = next((c for c in bound if isinstance(c, TextConditioner)), None)
            begin = Begin(self.pipeline, self.source, self.encode,
                          lambda clean, noise: add_noise(scheduler, clean, noise, first_timestep),
                          generator, start, text)
            conditioner, start = conditioner.begin(begin)
            bound.append(conditioner)
        return tuple(bound), start

    def encode(self, name: str, pixels: torch.Tensor) -> Any:
        """The VAE's latent distribution of ``pixels`` (in [-1, 1], at the working size), once per name."""
        if name not in self._encoded:
            vae = self.pipeline.vae
            self._encoded[name] = encode_pixels(vae, pixels.to(vae.device, vae.dtype), self.pipeline.vae_scale_factor)
        return self._encoded[name]

    def text(self, job: DiffusionJob, guided: bool) -> TextConditioner:
        key = (job.prompt, job.negative_prompt, guided, job.prompt_syntax, job.clip_skip)
        if key not in self._texts:
            if hasattr(self.pipeline.vae, "release_decoder_buffers"):  # the last request's, under the text encoder's
                self.pipeline.vae.release_decoder_buffers()
            if is_flux(self.pipeline):
                self._texts[key] = encode_text_flux(self.pipeline, job.prompt, job.prompt_syntax)
            elif is_transformer(self.pipeline):
                self._texts[key] = encode_text_sd3(self.pipeline, job.prompt, job.negative_prompt, guided,
                                                   job.prompt_syntax, job.clip_skip)
            else:
                self._texts[key] = encode_text(self.pipeline, job.prompt, job.negative_prompt, guided,
                                               self.source.size[::-1], job.prompt_syntax, job.clip_skip)
            mapped_weights.release(self.pipeline)
        return replace(self._texts[key], timestep_cond=guidance_embedding(self.pipeline, job.guidance_scale))


def source_pixels(pipeline: Any, picture: Image.Image) -> torch.Tensor:
    """``picture`` in [-1, 1] for the VAE, at its own size. Flux's pipelines round pictures to 16 px (their 2x2
    patches of an eighth-size latent), which would squash a 448x296 working size to 448x288; our Flux denoiser pads
    odd latents instead, so a processor of the VAE's own factor, 8, keeps every working size as it is."""
    processor = pipeline.image_processor
    if processor.config.vae_scale_factor != pipeline.vae_scale_factor:
        from diffusers.image_processor import VaeImageProcessor

        processor = VaeImageProcessor(vae_scale_factor=pipeline.vae_scale_factor)
    return processor.preprocess(picture)


def token_merging(unet: Any, ratio: float, levels: int) -> contextlib.AbstractContextManager[None]:
    """``unet`` merging ``ratio`` of its tokens at ``levels`` levels for a run: a PyTorch UNet's attention patched,
    or the OpenVINO stand-in's own way (``merging_tokens``)."""
    if hasattr(unet, "merging_tokens"):
        return unet.merging_tokens(ratio, levels)
    return merging_tokens(unet, ratio, levels)


def run_diffusion(
    pipeline: Any, job: DiffusionJob, source: Image.Image, on_step: StepCallback | None = None
) -> DiffusionOutput:
    """Run ``job`` on ``source`` (already at the working size, multiples of 8) with ``pipeline``'s components."""
    return DiffusionSession(pipeline, source).run(job, on_step)


@dataclass(frozen=True)
class TinyLatents:
    """A tiny autoencoder's (TAESD's) encoding: the latents themselves, already at the UNet's scale, with no
    spread to draw from (diffusers takes them as they are)."""

    mean: torch.Tensor
    std: None = None


def is_tiny(vae: Any) -> bool:
    """Whether ``vae`` is a tiny autoencoder (diffusers' AutoencoderTiny: TAESD, TAESDXL)."""
    return type(vae).__name__ == "AutoencoderTiny"


def posterior_sample(distribution: Any, generator: torch.Generator) -> torch.Tensor:
    """One draw from the VAE's latent distribution in float32 (the mean, then noise from ``generator``: diffusers'
    order); a tiny autoencoder's latents as they are, drawing nothing."""
    mean = distribution.mean.float()
    if distribution.std is None:
        return mean
    return mean + distribution.std.float() * draw_noise(mean.shape, generator, mean.device)


ROOM_MARGIN = 0.5e9  # bytes beyond the decoder's estimated buffers that should stay free while decoding


def encode_pixels(vae: Any, pixels: torch.Tensor, scale: int) -> Any:
    """The VAE's latent distribution of ``pixels``, in tiles when the picture is large; then the OpenVINO VAE's
    compiled encoder is freed (``OpenVinoVAE.release_encoder``), as nothing else encodes until the next source."""
    encoded = _encode_pixels(vae, pixels, scale)
    if hasattr(vae, "release_encoder"):
        vae.release_encoder()
    return encoded


def _encode_pixels(vae: Any, pixels: torch.Tensor, scale: int) -> Any:
    if is_tiny(vae):
        def encode(tile: torch.Tensor) -> torch.Tensor:
            return vae.encode(tile).latents

        if not needs_tiles(*pixels.shape[-2:]):
            return TinyLatents(encode(pixels))
        return TinyLatents(tiled_apply(encode, pixels, TILE_PIXELS, OVERLAP_PIXELS, 1 / scale, align=scale))
    if not needs_tiles(*pixels.shape[-2:]):
        return vae.encode(pixels).latent_dist
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = tiled_apply(lambda tile: vae.encode(tile).latent_dist.parameters, pixels, TILE_PIXELS,
                          OVERLAP_PIXELS, 1 / scale, align=scale)
    return DiagonalGaussianDistribution(moments.to(vae.dtype))


def guidance_embedding(pipeline: Any, guidance_scale: float) -> torch.Tensor | None:
    """LCM's guidance-scale embedding for UNets distilled with one (``time_cond_proj_dim``), else None."""
    if is_flux(pipeline):
        return guidance_input(pipeline.transformer, guidance_scale)
    network = denoiser(pipeline)
    dimension = network.config.time_cond_proj_dim
    if dimension is None:
        return None
    scale = torch.tensor([guidance_scale - 1.0])
    embedding = pipeline.get_guidance_scale_embedding(scale, embedding_dim=dimension)
    return embedding.to(device=network.device, dtype=network.dtype)


def set_timesteps(scheduler: Any, plan: StepPlan, device: torch.device, options: dict[str, Any] | None = None
                  ) -> torch.Tensor:
    """Build the schedule of ``plan.schedule_steps`` (with a model's own ``options``: Flux's sigmas and shift)
    and keep the part that runs."""
    scheduler.set_timesteps(plan.schedule_steps, device=device, **(options or {}))
    first = plan.start_index * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first)
    return scheduler.timesteps[first:]


def sigma_at(scheduler: Any, index: int, timestep: torch.Tensor) -> float:
    """The noise level where the run starts: sigma in the variance-exploding convention, or a flow-matching
    model's own sigma (the share of noise, from 0 to 1)."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) > index:
        return float(sigmas[index])
    alpha = float(scheduler.alphas_cumprod[int(timestep)])
    return ((1 - alpha) / alpha) ** 0.5


def prepare_latents(
    pipeline: Any, scheduler: Any, latent_dist: Any, first_timestep: torch.Tensor,
    generator: torch.Generator, size: tuple[int, int], pure: bool = False,
) -> StartLatents:
    """The starting latents, in float32 whatever the UNet's dtype, with the clean latents and the noise kept.

    ``pure``: the run starts from pure noise (strength 1); the source's latents, when given, are still drawn (a
    mask blends them back), before the noise, as diffusers' inpaint pipeline does.

    Noise is drawn in float32 and the sampler works in float32: PyTorch's normal draws in bf16 or fp16 are a
    different sequence from float32's (for tensors of more than a few elements), so drawing in the model's dtype
    would make a seed mean another picture on another dtype. In float32 this is exactly diffusers' draw order.
    """
    vae = pipeline.vae
    device = denoiser(pipeline).device
    if latent_dist is None:  # the VAE's channels: an inpainting UNet takes more than it returns
        scale = pipeline.vae_scale_factor
        noise = draw_noise((1, vae.config.latent_channels, size[0] // scale, size[1] // scale), generator, device)
        return StartLatents(None, noise, noise * _start_sigma(scheduler), pure=True)
    latents = posterior_sample(latent_dist, generator)  # the posterior sample, then the noise: diffusers' order
    shift, std = _latent_stats(vae, latents)
    clean = (latents - shift) * vae.config.scaling_factor / std
    noise = draw_noise(clean.shape, generator, device)
    if pure:
        return StartLatents(clean, noise, noise * _start_sigma(scheduler), pure=True)
    return StartLatents(clean, noise, add_noise(scheduler, clean, noise, first_timestep))


def _start_sigma(scheduler: Any) -> float:
    """The scale of pure noise at the schedule's start (flow-matching samplers start at sigma 1)."""
    return getattr(scheduler, "init_noise_sigma", 1.0)


def draw_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard normal noise from the CPU ``generator`` in float32, moved to ``device``."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)


def denoise(
    pipeline: Any, scheduler: Any, timesteps: torch.Tensor, start: StartLatents,
    conditioners: tuple[Conditioner, ...], guidance_scale: float, guided: bool, generator: torch.Generator,
    on_step: Callable[[int, int, torch.Tensor], None], cache_steps: int = 1,
) -> torch.Tensor:
    """The sampler's loop: each step asks the conditioners for UNet inputs, guides, lets them adjust the
    prediction, steps, and lets them act on the latents. ``cache_steps`` above 1: the UNet's deep features are
    computed every that many steps and reused between (``img2img.engine.step_cache``)."""
    step_options = _step_options(scheduler, generator)
    network = denoiser(pipeline)
    cache = StepCache(network, cache_steps) if cache_steps > 1 else None
    guide = next((conditioner for conditioner in conditioners if conditioner.guidance_rows), None)
    rows = (guide.guidance_rows if guide is not None else 2) if guided else 1
    latents = start.noised
    for index, timestep in enumerate(timesteps):
        following = timesteps[index + 1] if index + 1 < len(timesteps) else None
        model_input = torch.cat([latents] * rows) if rows > 1 else latents
        if hasattr(scheduler, "scale_model_input"):  # flow-matching samplers take the latents as they are
            model_input = scheduler.scale_model_input(model_input, timestep)
        step = Step(index, len(timesteps), timestep, guided, start, scheduler, following, model_input, rows)
        for conditioner in conditioners:
            model_input = conditioner.extend_sample(step, model_input)
        if cache is not None:
            noise_pred = cache(index, model_input.to(network.dtype), timestep,
                               **unet_inputs(conditioners, step)).float()
        else:
            noise_pred = network(model_input.to(network.dtype), timestep, return_dict=False,
                                 **unet_inputs(conditioners, step))[0].float()
        if guide is not None and guided:
            noise_pred = guide.guide(noise_pred, guidance_scale)
        elif guided:
            unconditional, conditional = noise_pred.chunk(2)
            noise_pred = unconditional + guidance_scale * (conditional - unconditional)
        for conditioner in conditioners:
            noise_pred = conditioner.adjust_prediction(step, noise_pred)
        latents = scheduler.step(noise_pred, timestep, latents, **step_options, return_dict=False)[0]
        for conditioner in conditioners:
            latents = conditioner.after_step(step, latents)
        on_step(index + 1, len(timesteps), latents)
    return latents


def decode(pipeline: Any, latents: torch.Tensor) -> np.ndarray:
    make_room(pipeline, latents)
    vae = pipeline.vae
    mean, std = _latent_stats(vae, latents)
    latents = (latents * std / vae.config.scaling_factor + mean).to(vae.dtype)
    scale = pipeline.vae_scale_factor
    if needs_tiles(latents.shape[-2] * scale, latents.shape[-1] * scale):
        pixels = tiled_apply(lambda tile: vae.decode(tile, return_dict=False)[0], latents, TILE_PIXELS // scale,
                             OVERLAP_PIXELS // scale, scale)
    else:
        pixels = vae.decode(latents, return_dict=False)[0]
    return pipeline.image_processor.postprocess(pixels, output_type="np")


def make_room(pipeline: Any, latents: torch.Tensor) -> None:
    """Before decoding: when the machine has less memory free than decoding needs (float32 buffers, plus
    ROOM_MARGIN), free the OpenVINO UNet's compiled graphs first, with a note. The next image compiles them again
    (SD 1.5: about 2 to 3 s) where the machine would otherwise swap or kill the process; the result is the same.
    The float32 graphs (CPUs without bf16) are freed before every decode, silently: they are 3.4 GB for SD 1.5,
    and decoding beside them set that path's peak (4.84 GiB; 4.30 without them)."""
    network = denoiser(pipeline)
    release = getattr(network, "release_graphs", None)
    if release is None:
        return
    free = available_memory()
    pixels = latents.shape[-2] * latents.shape[-1] * pipeline.vae_scale_factor**2
    need = pixels * DIFFUSION_BYTES_PER_PIXEL * 2 + ROOM_MARGIN
    if free is not None and free < need:
        release(f"only {free / 1e9:.1f} GB of memory was free to decode in (about {need / 1e9:.1f} GB wanted): the "
                "UNet's compiled graph was freed first and compiles again for the next image")
    elif getattr(network, "release_before_decoding", False):
        release(None)


def _latent_stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """Per-channel latent mean and std for VAEs that declare them; SD 3's one shift for all channels (its VAE's
    ``shift_factor``); else the identity (0, 1)."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        shift = getattr(vae.config, "shift_factor", None)
        return (float(shift) if shift else 0.0), 1.0
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean).view(shape).to(like.device, like.dtype),
            torch.tensor(std).view(shape).to(like.device, like.dtype))


def _step_options(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    accepted = inspect.signature(scheduler.step).parameters
    options: dict[str, Any] = {}
    if "generator" in accepted:
        options["generator"] = generator
    if "eta" in accepted:
        options["eta"] = 0.0  # DDIM's deterministic form, as A1111 and diffusers default to
    return options
