"""One field table: every face derives the request's fields from GenerationRequest's declarations, and records embed
the request in the JSON layout of every earlier version."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from img2img import Engine, GenerationRequest
from img2img.engine.request import FIELDS, SPEC
from img2img.engine.result import RECORDED, GenerationRecord

# A record as this version's predecessor wrote it (tiny model, loopback, Euler a), byte for byte.
WRITTEN_BEFORE = (
    '{"background": "white", "color_match": true, "device": "cpu", "dtype": "bfloat16", "engine": "diffusion", '
    '"guidance_scale": 7.0, "height": 72, "keep_alpha": false, "loop_decay": 0.8, "loops": 2, "max_side": 96, '
    '"model": "tiny", "model_family": "SD 1.x", "model_hash": '
    '"38ced44052344d0171b8eae8fd052d8c001b51b01ff4c0a5027cd6db04305b42", "negative_prompt": "", "prompt": '
    '"a watercolor painting", "quantize": "none", "resize_mode": "just", "sampler": "Euler a", "seed": 9, "size": '
    'null, "source_sha256": "f872f176240127e523f5df20816ee25bf267d8f89b2cae1bd4f01cbffaacadb7", "start_sigma": '
    '0.698399, "steps": 4, "steps_mode": "diffusers", "steps_run": 2, "strength": 0.7, "style_image_sha256": null, '
    '"versions": {"diffusers": "0.42.1", "img2img": "0.1.0", "torch": "2.13.0+cpu", "transformers": "5.23.0"}, '
    '"width": 96, "working_height": 72, "working_width": 96}'
)
# The fields of an early version's record: no sizes, loopback, colour match, quantization or style picture yet.
EARLY = ("engine", "prompt", "negative_prompt", "strength", "steps", "steps_mode", "steps_run", "start_sigma",
         "guidance_scale", "sampler", "seed", "width", "height", "working_width", "working_height", "model",
         "model_family", "model_hash", "source_sha256", "device", "dtype", "versions")


def _options(command: str) -> set[str]:
    from typer.main import get_command

    from img2img.cli import app  # importing the package registers the commands

    click_command = get_command(app).commands[command]  # type: ignore[attr-defined]
    return {option for param in click_command.params for option in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize(("command", "left_out"), [
    ("run", set()), ("batch", {"num_images"}), ("sweep", {"strength", "guidance_scale", "steps", "sampler"})])
def test_every_field_is_an_option_of_the_commands(command, left_out) -> None:
    """run, sweep and batch take each field of the table under its spec's flag (sweep takes four as lists)."""
    options = _options(command)
    for spec in FIELDS:
        if spec.option.startswith("-") and spec.name not in left_out:
            assert spec.option in options, (command, spec.name)
    assert {"--strength", "--cfg", "--steps", "--sampler"} <= options  # sweep's lists keep the flags
    if command == "run":
        assert {"-n", "--count", "--keep-alpha", "--no-keep-alpha", "--loop-decay"} <= options


def test_the_cli_reports_a_field_by_its_flag() -> None:
    from img2img.cli.common import flag_for

    assert [flag_for(name) for name in ("guidance_scale", "num_images", "resize_mode", "loop_decay", "prompt")] == [
        "--cfg", "-n", "--resize", "--loop-decay", "PROMPT"]


def test_a_record_embeds_the_request_and_reads_its_fields_through() -> None:
    record = GenerationRecord.from_json(WRITTEN_BEFORE)
    assert isinstance(record.request, GenerationRequest)
    assert (record.seed, record.loops, record.loop_decay, record.sampler) == (9, 2, 0.8, "Euler a")
    assert record.seed is record.request.seed
    assert set(RECORDED) == {spec.name for spec in FIELDS} - {"num_images"} | {"size"}
    with pytest.raises(AttributeError):
        record.num_images  # noqa: B018  (a record describes one image)


def test_records_written_before_keep_their_meaning() -> None:
    """Read and written again, an earlier record says what it meant: its prompt was plain text, no clip skip, the
    model's own VAE, no image prompts, every step in full, no tokens merged (at one level when merging), no
    retention target, no image guidance (no edit model)."""
    again = json.loads(GenerationRecord.from_json(WRITTEN_BEFORE).to_json())
    assert again == json.loads(WRITTEN_BEFORE) | {"prompt_syntax": "plain", "clip_skip": 1, "vae": None,
                                                  "ip_adapter": None, "image_prompt_mode": "both",
                                                  "image_prompt_combine": "separate", "cache_steps": 1,
                                                  "merge_tokens": 0.0, "merge_levels": 1, "keep_structure": None,
                                                  "keep_colour": None, "keep_detail": None, "image_cfg": None}


def test_an_early_record_takes_the_defaults_of_later_fields(tiny_sd, photo) -> None:
    """A record from before sizes, loopback and colour match existed still reproduces, with those fields' defaults."""
    full = json.loads(WRITTEN_BEFORE)
    early = GenerationRecord.from_json(json.dumps({key: full[key] for key in EARLY}))
    request = early.to_request(photo)
    for name in ("size", "max_side", "resize_mode", "background", "keep_alpha", "color_match", "loops",
                 "loop_decay"):
        assert getattr(request, name) == getattr(GenerationRequest(source=photo, prompt=""), name), name
    assert (early.quantize, early.style_image_sha256, request.seed, request.strength) == ("none", None, 9, 0.7)
    result = Engine(device="cpu").generate(replace(request, model=str(tiny_sd)))
    assert (result.record.loops, result.record.sampler, result.images[0].size) == (1, "Euler a", (64, 48))


def test_every_request_field_reaches_the_record(tiny_sd, photo) -> None:
    """The record writes each recorded field of the request, as given."""
    asked = GenerationRequest(source=photo, prompt="ink", negative_prompt="blur", strength=0.4, guidance_scale=3.0,
                              steps=5, sampler="Euler", seed=11, steps_mode="exact", model=str(tiny_sd), max_side=80,
                              resize_mode="crop", background="#102030", color_match=True, loops=2, loop_decay=0.5)
    data = json.loads(Engine(device="cpu").generate(asked).record.to_json())
    for spec in FIELDS:
        if spec.name in RECORDED and spec.name != "model":
            assert data[spec.name] == getattr(asked, spec.name), spec.name
    assert data["model"] == tiny_sd.name and data["size"] is None


def test_the_command_line_loads_no_torch() -> None:
    """The CLI's options and the field table come without importing torch (img2img --help is instant)."""
    code = "import sys, img2img.cli, img2img.cli.generate, img2img.engine.request; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_specs_name_their_attributes() -> None:
    assert SPEC["guidance_scale"].option == "--cfg" and SPEC["steps"].unset
    assert [spec.name for spec in FIELDS][:3] == ["prompt", "negative_prompt", "strength"]


def test_params_from_takes_every_field_but_the_new_runs_own(photo, tmp_path) -> None:
    """--params-from takes over the look (loops, colour match included) but not the model, sizes or sampler
    placeholders of a built-in style record."""
    from img2img.imageio.foreign import NOT_TAKEN, params_from
    from img2img.imageio.metadata import Metadata
    from img2img.imageio.output import save_image

    asked = GenerationRequest(source=photo, prompt="starry-swirl", model="builtin", seed=5, loops=2, loop_decay=0.5,
                              color_match=True, max_side=64, strength=0.3)
    record = Engine(device="cpu").generate(asked).record
    path = save_image(Engine().read_source(asked).rgb, tmp_path / "made.png",
                      Metadata(record.to_parameters_text(), record.to_json()))
    found = params_from(path).fields
    assert found == {"prompt": "starry-swirl", "negative_prompt": "", "strength": 0.3, "seed": 5,
                     "steps_mode": "diffusers", "loops": 2, "loop_decay": 0.5, "color_match": True,
                     "prompt_syntax": "a1111", "clip_skip": 1, "cache_steps": 1,
                     "merge_tokens": 0.0, "merge_levels": 1}
    assert not set(found) & set(NOT_TAKEN)
