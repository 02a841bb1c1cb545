"""Samplers by the names users know from A1111, each a diffusers scheduler built from the model's own config.

The tables are the whole registry: a name maps to a scheduler class and the options that make it that sampler.
Flow-matching models (SD 3.x, whose own scheduler is a ``FlowMatch...`` one) have their own, smaller table: the
same names, built on sigmas that run straight from noise (1) to the picture (0).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from img2img.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

DEFAULT_SAMPLER = "DPM++ 2M Karras"
FLOW_DEFAULT_SAMPLER = "Euler"


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_class: str  # a class name in ``diffusers``
    options: dict[str, Any] = field(default_factory=dict)  # overrides applied on top of the model's config
    stochastic: bool = False  # draws fresh noise at each step, so the seed matters beyond the start


SAMPLERS: dict[str, SamplerSpec] = {
    "DPM++ 2M Karras": SamplerSpec("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler"),
    "DPM++ 2M SDE Karras": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        stochastic=True,
    ),
    "DPM++ 2M SDE": SamplerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, stochastic=True
    ),
    "DPM++ SDE Karras": SamplerSpec("DPMSolverSDEScheduler", {"use_karras_sigmas": True}, stochastic=True),
    "DPM++ SDE": SamplerSpec("DPMSolverSDEScheduler", stochastic=True),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler"),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler", stochastic=True),
    "Euler": SamplerSpec("EulerDiscreteScheduler"),
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler", stochastic=True),
    "Heun": SamplerSpec("HeunDiscreteScheduler"),
    "LMS": SamplerSpec("LMSDiscreteScheduler"),
    "LMS Karras": SamplerSpec("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "DDIM": SamplerSpec("DDIMScheduler", {"set_alpha_to_one": False}),
    "DDPM": SamplerSpec("DDPMScheduler", stochastic=True),
    "PLMS": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": SamplerSpec("UniPCMultistepScheduler"),
    "LCM": SamplerSpec("LCMScheduler", stochastic=True),
}


# A flow-matching model's samplers. The multistep solvers take the model's shift as their ``flow_shift``.
FLOW_SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": SamplerSpec("FlowMatchEulerDiscreteScheduler"),
    "Heun": SamplerSpec("FlowMatchHeunDiscreteScheduler"),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler",
                            {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
    "UniPC": SamplerSpec("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
}


def is_flow_config(model_scheduler_config: dict[str, Any]) -> bool:
    """Whether a model's scheduler config is a flow-matching one: SD 3.x ships FlowMatchEulerDiscreteScheduler's,
    with its ``shift`` (a config taken from a scheduler built in memory has no class name), or a multistep solver's
    with flow sigmas."""
    config = model_scheduler_config
    return str(config.get("_class_name", "")).startswith("FlowMatch") or "shift" in config or bool(
        config.get("use_flow_sigmas"))


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def canonical_sampler_name(name: str) -> str:
    """Return the table's spelling of ``name`` (case and surrounding spaces do not matter)."""
    if isinstance(name, str):
        wanted = " ".join(name.split()).casefold()
        for known in SAMPLERS:
            if known.casefold() == wanted:
                return known
    raise InvalidArgument("sampler", f"one of {', '.join(SAMPLERS)}", name)


def build_scheduler(name: str, model_scheduler_config: dict[str, Any], seed: int | None = None) -> Any:
    """A fresh scheduler for ``name`` configured from the model's own scheduler config.

    The model's config carries what must not change (beta schedule, prediction type, timestep spacing); the
    table's options only choose the algorithm. ``seed`` seeds samplers that keep their own noise source.
    """
    import diffusers  # heavy; imported only when a sampler is built

    name = canonical_sampler_name(name)
    if is_flow_config(model_scheduler_config):
        return _flow_scheduler(name, model_scheduler_config)
    spec = SAMPLERS[name]
    scheduler_class = getattr(diffusers, spec.scheduler_class)
    options = dict(spec.options)
    if spec.scheduler_class == "DPMSolverSDEScheduler" and seed is not None:
        options["noise_sampler_seed"] = seed
    config = {k: v for k, v in model_scheduler_config.items() if not k.startswith("_")}
    # Options the model set for another algorithm (LCM's or DPM's) would confuse this one.
    for stale in ("use_karras_sigmas", "algorithm_type", "use_exponential_sigmas", "use_beta_sigmas"):
        if stale not in options:
            config.pop(stale, None)
    return scheduler_class.from_config(config, **options)


def _flow_scheduler(name: str, model_scheduler_config: dict[str, Any]) -> Any:
    """A flow-matching model's sampler ``name``, with the model's shift; other names are refused in one line."""
    import diffusers

    if name not in FLOW_SAMPLERS:
        raise InvalidArgument("sampler", f"one of {', '.join(FLOW_SAMPLERS)} for a flow-matching model (SD 3.x)", name)
    spec = FLOW_SAMPLERS[name]
    scheduler_class = getattr(diffusers, spec.scheduler_class)
    config = {k: v for k, v in model_scheduler_config.items() if not k.startswith("_")}
    config.setdefault("shift", config.get("flow_shift", 1.0))  # a multistep solver's name for it
    if spec.scheduler_class.startswith("FlowMatch"):  # the model's own options, those this one takes
        known = inspect.signature(scheduler_class.__init__).parameters
        return scheduler_class.from_config({k: v for k, v in config.items() if k in known})
    # Flux shifts by image size: the solver then takes its shift from set_timesteps' ``mu`` (img2img.engine.flux)
    options = {**spec.options, "flow_shift": float(config["shift"]),
               "use_dynamic_shifting": bool(config.get("use_dynamic_shifting", False))}
    return scheduler_class.from_config({"num_train_timesteps": config.get("num_train_timesteps", 1000)}, **options)


def add_noise(scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """``clean`` latents noised to ``timestep``'s level: the sampler's own forward process, or for a flow-matching
    sampler the point ``sigma * noise + (1 - sigma) * clean`` on the straight path, sigma being the schedule's at
    that timestep (diffusers' ``scale_noise``, which reads it from the sampler's step counter instead)."""
    if not hasattr(scheduler, "scale_noise"):
        return scheduler.add_noise(clean, noise, timestep.reshape(1))
    found = (scheduler.timesteps.to(timestep.device) == timestep).nonzero()
    sigma = scheduler.sigmas[int(found[0, 0])] if len(found) else timestep / scheduler.config.num_train_timesteps
    sigma = sigma.to(clean.device, clean.dtype)
    return sigma * noise + (1.0 - sigma) * clean
