"""What each backend runs, declared as data, and the checks that read it.

``choose_placement`` refuses a device, dtype or quantization that the backend does not run, and the engine checks a
request's conditioners against the backend's UNet inputs before it runs: an input that the backend's UNet does not
take is run by the backend's fallback (PyTorch, with a one-line note on the result) or the request is refused. An
input is never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from img2img.engine.conditioning import Conditioner
from img2img.errors import InvalidArgument


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]  # device kinds ("cuda" covers cuda:N)
    dtypes: tuple[str, ...]
    quantize: tuple[str, ...]
    unet_inputs: frozenset[str] | None  # the UNet's keyword inputs beyond sample and timestep; None: any
    fallback: str | None  # the backend that runs what this one's UNet cannot (with a note); None: refused
    label: str = ""

    def missing_inputs(self, conditions: tuple[Conditioner, ...]) -> dict[str, str]:
        """The UNet inputs that ``conditions`` declare and this backend does not take, each with its kind."""
        if self.unet_inputs is None:
            return {}
        return {name: conditioner.kind for conditioner in conditions for name in conditioner.inputs
                if name not in self.unet_inputs}

    def check_conditions(self, conditions: tuple[Conditioner, ...]) -> list[str]:
        """The notes for running ``conditions`` here; InvalidArgument when nothing here can run them."""
        missing = self.missing_inputs(conditions)
        if not missing:
            return []
        what = ", ".join(f"{name} (from the {kind} conditioner)" for name, kind in sorted(missing.items()))
        if self.fallback is None:
            raise InvalidArgument("backend", f"one whose UNet takes {what}", self.name)
        fallback = BACKENDS[self.fallback].label or self.fallback
        return [f"{self.label or self.name}'s UNet takes no {what}; this request's UNet runs with {fallback} instead"]


BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", ("cpu", "cuda", "mps"), ("float32", "float16", "bfloat16"), ("none",), None, None,
                     "PyTorch"),
    # The UNet graphs traced for OpenVINO take the prompt's inputs, ControlNets' residuals and image prompts (their
    # keys and values: models/ov_runtime.py, ov_control.py, ov_image_prompt.py); T2I-Adapters' features run with
    # PyTorch.
    "openvino": Backend("openvino", ("cpu",), ("float32", "bfloat16"), ("none", "int8"),
                        frozenset({"encoder_hidden_states", "timestep_cond", "added_cond_kwargs",
                                   "down_block_additional_residuals", "mid_block_additional_residual",
                                   "ip_hidden_states"}), "torch", "OpenVINO"),
}


def check_placement(backend: str, device: str, dtype: str, quantize: str) -> None:
    """Refuse a device, dtype or quantization that ``backend`` does not run, naming what it does."""
    runs = BACKENDS[backend]
    if device.split(":")[0] not in runs.devices:
        others = [name for name, other in BACKENDS.items() if device.split(":")[0] in other.devices]
        raise InvalidArgument("backend", f"{' or '.join(others)} on {device} ({runs.label} runs on "
                              f"{', '.join(runs.devices)} here)", backend)
    if dtype not in runs.dtypes:
        raise InvalidArgument("dtype", f"{' or '.join(runs.dtypes)} with {runs.label}", dtype)
    if quantize not in runs.quantize:
        users = [other.name for other in BACKENDS.values() if quantize in other.quantize]
        raise InvalidArgument("quantize", f"none unless the backend is {' or '.join(users)} ({quantize} weights "
                              f"run through it on the CPU; this run uses {backend} on {device})", quantize)
