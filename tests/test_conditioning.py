"""A conditioner defined here, and only here, acts inside the denoising loop and leaves its entry in the record:
the protocol lets a new kind of conditioning in without touching the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from img2img import Engine, GenerationRequest, InvalidArgument
from img2img.engine.conditioning import Conditioner, Step
from img2img.engine.result import GenerationRecord


@dataclass(frozen=True, eq=False)
class ShiftFrom(Conditioner):
    """Adds ``amount`` to the guided noise prediction from step ``from_step`` on."""

    amount: float
    from_step: int
    seen: list[tuple[int, int, bool]] = field(default_factory=list)  # (index, total, had clean latents)
    kind = "shift"

    def adjust_prediction(self, step: Step, noise_pred: torch.Tensor) -> torch.Tensor:
        self.seen.append((step.index, step.total, step.start.clean is not None))
        return noise_pred + self.amount if step.index >= self.from_step else noise_pred

    def metadata(self) -> dict[str, Any]:
        return {"amount": self.amount, "from_step": self.from_step}


@dataclass(frozen=True, eq=False)
class AttentionMask(Conditioner):
    """Gives the UNet an input the OpenVINO graph was not traced with: a cross-attention mask of ones."""

    kind = "mask-of-ones"
    inputs = ("encoder_attention_mask",)

    def unet_inputs(self, step: Step) -> dict[str, Any]:
        return {"encoder_attention_mask": torch.ones(2 if step.guided else 1, 77)}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype="float32")


def _request(photo: Path, model: Path, **fields: Any) -> GenerationRequest:
    values = {"prompt": "a watercolor painting", "strength": 0.6, "steps": 10, "seed": 7, "guidance_scale": 5.0}
    return GenerationRequest(source=photo, model=str(model), **{**values, **fields})


def test_a_conditioner_acts_from_its_step_and_is_recorded(engine: Engine, tiny_sd: Path, photo: Path) -> None:
    plain = engine.generate(_request(photo, tiny_sd))
    shift = ShiftFrom(2.0, from_step=2)
    shifted = engine.generate(_request(photo, tiny_sd, conditions=(shift,)))
    never = engine.generate(_request(photo, tiny_sd, conditions=(ShiftFrom(0.5, from_step=99),)))

    assert shift.seen == [(index, 6, True) for index in range(6)]  # 10 steps at 0.6 run 6, from the source
    assert never.images[0].tobytes() == plain.images[0].tobytes()  # a hook that changes nothing changes nothing
    difference = np.abs(np.asarray(shifted.images[0], float) - np.asarray(plain.images[0], float)).mean()
    assert difference > 1, difference
    assert shifted.record.conditions == ({"kind": "shift", "amount": 2.0, "from_step": 2},)
    assert '"conditions": [{"amount": 2.0, "from_step": 2, "kind": "shift"}]' in shifted.record.to_json()
    assert "conditions" not in plain.record.to_json()  # records without conditioners read as before
    with pytest.raises(InvalidArgument, match="record should be one without conditioners"):
        GenerationRecord.from_json(shifted.record.to_json()).to_request(photo)


def test_start_latents_are_kept_and_pure_noise_has_no_clean_latents(engine: Engine, tiny_sd: Path,
                                                                      tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data

    coffee = tmp_path / "coffee.png"  # a photo's own size, not a multiple of 64
    Image.fromarray(data.coffee()).resize((130, 97), Image.LANCZOS).save(coffee)
    for strength, clean in ((1.0, False), (0.6, True)):
        shift = ShiftFrom(0.0, from_step=0)
        result = engine.generate(_request(coffee, tiny_sd, strength=strength, conditions=(shift,)))
        assert shift.seen and all(had_clean is clean for _, _, had_clean in shift.seen)
        assert result.images[0].size == (130, 97)


def test_a_model_given_as_a_path_object_is_accepted(engine: Engine, tiny_sd: Path, photo: Path) -> None:
    by_path = engine.generate(GenerationRequest(source=photo, prompt="a boat", model=tiny_sd, steps=4, seed=1))
    by_text = engine.generate(GenerationRequest(source=photo, prompt="a boat", model=str(tiny_sd), steps=4, seed=1))
    assert by_path.images[0].tobytes() == by_text.images[0].tobytes()


def test_conditions_are_checked(engine: Engine, photo: Path, tiny_sd: Path) -> None:
    with pytest.raises(InvalidArgument, match="conditions should be a tuple of"):
        engine.generate(_request(photo, tiny_sd, conditions=("shift",)))
    with pytest.raises(InvalidArgument, match="conditions should be used with diffusion models only"):
        engine.generate(GenerationRequest(source=photo, prompt="fauve", model="builtin",
                                          conditions=(ShiftFrom(0.5, 0),)))


def test_openvino_hands_an_input_it_cannot_take_to_pytorch_with_a_note(tiny_sd: Path, photo: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    request = _request(photo, tiny_sd, conditions=(AttentionMask(),))
    reference = Engine(device="cpu", dtype="float32", backend="torch").generate(request)
    openvino = Engine(device="cpu", dtype="float32", backend="openvino")
    fast = openvino.generate(request)
    backend_notes = [note for note in fast.notes if note not in reference.notes]
    assert backend_notes == ["OpenVINO's UNet takes no encoder_attention_mask (from the mask-of-ones conditioner); "
                             "this request's UNet runs with PyTorch instead"]
    gap = np.abs(np.asarray(fast.images[0], float) - np.asarray(reference.images[0], float)).max()
    assert gap <= 2, gap
    plain = openvino.generate(_request(photo, tiny_sd))  # the next request without it runs with OpenVINO again
    assert plain.notes == reference.notes and not openvino.load(str(tiny_sd)).pipeline.unet.fallback.failed


def test_a_conditioner_gives_only_the_inputs_it_declares(engine: Engine, tiny_sd: Path, photo: Path) -> None:
    undeclared = type("Undeclared", (AttentionMask,), {"inputs": ()})()
    with pytest.raises(ValueError, match="gives the UNet's encoder_attention_mask without declaring it"):
        engine.generate(_request(photo, tiny_sd, conditions=(undeclared,)))


def test_a_backend_without_a_fallback_refuses_inputs_it_cannot_take() -> None:
    from dataclasses import replace

    from img2img.models.backends import BACKENDS

    strict = replace(BACKENDS["openvino"], fallback=None)
    with pytest.raises(InvalidArgument, match="backend should be one whose UNet takes encoder_attention_mask "
                                              r"\(from the mask-of-ones conditioner\), but got 'openvino'"):
        strict.check_conditions((AttentionMask(), ShiftFrom(1.0, 0)))
    assert BACKENDS["torch"].check_conditions((AttentionMask(),)) == []
    assert BACKENDS["openvino"].check_conditions((ShiftFrom(1.0, 0),)) == []  # it gives no UNet input
