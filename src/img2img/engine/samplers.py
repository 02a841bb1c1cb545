"""Samplers by the names users know from A1111, each a diffusers scheduler built from the model's own config.

The table is the whole registry: a name maps to a scheduler class and the options that make it that sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from img2img.errors import InvalidArgument

DEFAULT_SAMPLER = "DPM++ 2M Karras"


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

    spec = SAMPLERS[canonical_sampler_name(name)]
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
