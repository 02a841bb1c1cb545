"""Where strength becomes timesteps: the one definition used by every face.

strength 0        the source is returned unchanged; no step runs.
0 < strength < 1  "diffusers" mode (default): a schedule of ``steps`` is built and its last
                  int(steps * strength) steps run, at least one; the source latent is noised to the first of them.
                  "exact" mode: a schedule of int(steps / strength) steps is built (at most the model's training
                  timesteps) and its last ``steps`` run, so exactly ``steps`` steps start near the strength's
                  noise level, as ComfyUI and A1111's "do exactly the number of steps" do.
                  Flow-matching models (SD 3.x) in "diffusers" mode: the schedule starts at step
                  int(steps - steps * strength), as diffusers' SD 3 and Flux img2img pipelines count, so the count
                  rounds up (8 steps at strength 0.6 run 5, where SD's rounding runs 4). Their noise level there is
                  the schedule's sigma: the start is sigma * noise + (1 - sigma) * source on the straight path.
strength 1        the source is ignored: the latent starts as pure noise (text-to-image) and every step runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from img2img.engine.request import StepsMode


@dataclass(frozen=True)
class StepPlan:
    """How a request's steps and strength map onto a sampler schedule."""

    schedule_steps: int  # the length of the schedule given to the sampler
    start_index: int  # the first schedule step that runs
    from_pure_noise: bool  # strength 1: ignore the source's latent

    @property
    def steps_to_run(self) -> int:
        return self.schedule_steps - self.start_index


def plan_steps(steps: int, strength: float, mode: StepsMode, train_timesteps: int = 1000, flow: bool = False
               ) -> StepPlan:
    """Map (steps, strength, mode) to a schedule; strength must be above 0 (0 never reaches the sampler).
    ``flow``: a flow-matching model's rounding in "diffusers" mode."""
    if strength <= 0:
        raise ValueError("strength 0 returns the source and has no step plan")
    if strength >= 1:
        return StepPlan(schedule_steps=steps, start_index=0, from_pure_noise=True)
    if mode == "exact":
        schedule_steps = min(max(int(steps / strength), steps), max(train_timesteps, steps))
        return StepPlan(schedule_steps=schedule_steps, start_index=schedule_steps - steps, from_pure_noise=False)
    if flow:  # diffusers' own arithmetic, float rounding included, so that a seed means its picture
        start = int(max(steps - min(steps * strength, steps), 0))
        return StepPlan(schedule_steps=steps, start_index=min(start, steps - 1), from_pure_noise=False)
    steps_to_run = max(1, min(int(steps * strength), steps))
    return StepPlan(schedule_steps=steps, start_index=steps - steps_to_run, from_pure_noise=False)
