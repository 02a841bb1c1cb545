"""Sizes, alpha, loopback, colour match, records that reproduce, and sweeps that encode once (tiny models)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2img import Engine, GenerationRequest, InvalidArgument
from img2img.engine.result import GenerationRecord
from img2img.sweep import Axis, make_axis


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu")


def _request(source: Path | Image.Image, model: Path, **fields) -> GenerationRequest:
    defaults = {"prompt": "a watercolor painting", "strength": 0.5, "steps": 6, "seed": 3}
    return GenerationRequest(source=source, model=str(model), **{**defaults, **fields})


def test_default_size_is_the_sources_and_size_options_change_it(engine, tiny_sd, photo) -> None:
    default = engine.generate(_request(photo, tiny_sd))
    assert default.images[0].size == (64, 48) and default.record.working_width == 64
    explicit = engine.generate(_request(photo, tiny_sd, size=(96, 64), resize_mode="crop"))
    assert explicit.images[0].size == (96, 64)
    assert (explicit.record.width, explicit.record.working_width, explicit.record.size) == (96, 96, (96, 64))
    long_side = engine.generate(_request(photo, tiny_sd, max_side=128))
    assert long_side.images[0].size == (128, 96) and long_side.record.max_side == 128


def test_size_and_max_side_are_checked(engine, tiny_sd, photo) -> None:
    with pytest.raises(InvalidArgument, match="size should be"):
        engine.generate(_request(photo, tiny_sd, size=(100, 64)))
    with pytest.raises(InvalidArgument, match="max_side should be left out when size is given"):
        engine.generate(_request(photo, tiny_sd, size=(64, 64), max_side=64))
    with pytest.raises(InvalidArgument, match="resize_mode should be one of just, crop, fill"):
        engine.generate(_request(photo, tiny_sd, resize_mode="zoom"))


def test_keep_alpha_puts_the_source_transparency_back(engine, tiny_sd, photo, tmp_path) -> None:
    rgba = Image.open(photo).convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, 32, 48))
    path = tmp_path / "cutout.png"
    rgba.save(path)
    kept = engine.generate(_request(path, tiny_sd, keep_alpha=True)).images[0]
    assert kept.mode == "RGBA" and kept.getpixel((5, 5))[3] == 0 and kept.getpixel((50, 5))[3] == 255
    flat = engine.generate(_request(path, tiny_sd)).images[0]
    assert flat.mode == "RGB"


def test_loopback_runs_each_pass_on_the_last_result(engine, tiny_sd, photo) -> None:
    square = {"size": (64, 64)}  # output = working size, so each pass's output is exactly the next pass's input
    one = engine.generate(_request(photo, tiny_sd, loops=1, **square))
    three = engine.generate(_request(photo, tiny_sd, loops=3, loop_decay=0.8, **square))
    assert three.record.loops == 3 and three.record.seed == one.record.seed == 3
    assert three.images[0].tobytes() != one.images[0].tobytes()
    # Pass k uses seed+k and the decayed strength on the previous result: replay the chain by hand.
    second = engine.generate(_request(one.images[0], tiny_sd, seed=4, strength=0.5 * 0.8, **square))
    third = engine.generate(_request(second.images[0], tiny_sd, seed=5, strength=0.5 * 0.8**2, **square))
    assert third.images[0].tobytes() == three.images[0].tobytes()


def test_colour_match_moves_colours_towards_the_source(engine, tiny_sd, photo) -> None:
    source = Image.open(photo).convert("RGB")
    plain = engine.generate(_request(photo, tiny_sd, strength=0.9)).images[0]
    matched = engine.generate(_request(photo, tiny_sd, strength=0.9, color_match=True)).images[0]
    source_mean = np.asarray(source, dtype=float).mean(axis=(0, 1))

    def colour_gap(image: Image.Image) -> float:
        return float(np.abs(np.asarray(image, dtype=float).mean(axis=(0, 1)) - source_mean).sum())

    assert colour_gap(matched) < colour_gap(plain)


def test_the_record_reproduces_the_image(engine, tiny_sd, photo) -> None:
    result = engine.generate(_request(photo, tiny_sd, num_images=2, sampler="Euler a", max_side=96))
    second = result.records[1]
    restored = GenerationRecord.from_json(second.to_json())
    assert restored == second
    again = engine.generate(replace(restored.to_request(photo), model=str(tiny_sd)))
    assert again.images[0].tobytes() == result.images[1].tobytes()
    assert again.record.to_json() == second.to_json()


def test_sweep_cells_equal_single_runs(engine, tiny_sd, photo) -> None:
    axes = [make_axis("strength", [0.3, 0.6]), make_axis("cfg", [1.0, 5.0])]
    swept = engine.sweep(_request(photo, tiny_sd), axes)
    assert [(r.strength, r.guidance_scale) for r in swept.result.records] == [(0.3, 1.0), (0.6, 1.0), (0.3, 5.0),
                                                                               (0.6, 5.0)]
    assert swept.column_labels() == ["strength 0.3", "strength 0.6"]
    assert swept.row_labels() == ["cfg 1", "cfg 5"]
    alone = engine.generate(_request(photo, tiny_sd, strength=0.6, guidance_scale=5.0))
    assert swept.result.images[3].tobytes() == alone.images[0].tobytes()


def test_a_sweep_encodes_the_source_and_prompt_once(engine, tiny_sd, photo, monkeypatch) -> None:
    """Three strengths in one sweep: one VAE encode and one prompt encoding; three runs do three of each."""
    pipeline = engine.load(str(tiny_sd)).pipeline
    calls = {"vae": 0, "text": 0}
    encode, text_forward = pipeline.vae.encode, pipeline.text_encoder.forward

    def counted_encode(*args, **kwargs):
        calls["vae"] += 1
        return encode(*args, **kwargs)

    def counted_text(*args, **kwargs):
        calls["text"] += 1
        return text_forward(*args, **kwargs)

    monkeypatch.setattr(pipeline.vae, "encode", counted_encode)
    monkeypatch.setattr(pipeline.text_encoder, "forward", counted_text)
    engine.sweep(_request(photo, tiny_sd), [Axis("strength", (0.4, 0.55, 0.7))])
    swept = dict(calls)
    calls.update(vae=0, text=0)
    for strength in (0.4, 0.55, 0.7):
        engine.generate(_request(photo, tiny_sd, strength=strength))
    assert swept == {"vae": 1, "text": 2}  # the prompt and the negative prompt, once each
    assert calls == {"vae": 3, "text": 6}


def test_bad_axes_are_named(engine, tiny_sd, photo) -> None:
    with pytest.raises(InvalidArgument, match="axis should be one of strength, cfg"):
        make_axis("denoise", [0.5])
    with pytest.raises(InvalidArgument, match="strength should be a non-empty list"):
        make_axis("strength", [])
    with pytest.raises(InvalidArgument, match=r"strength should be in \[0.0, 1.0\]"):
        engine.sweep(_request(photo, tiny_sd), [Axis("strength", (0.5, 1.5))])
