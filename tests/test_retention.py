"""Retention scores (how much of the source a result kept) and the strength finder that aims at one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from img2img import Engine, GenerationRequest, InvalidArgument
from img2img.engine.result import GenerationRecord
from img2img.engine.strength_finder import MAX_TRIES, MIN_STRENGTH, find_strength
from img2img.imageio.metadata import read_metadata
from img2img.imageio.retention import retention
from test_cli import assert_one_line_error, img2img


def photo(name: str, size: tuple[int, int]) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB").resize(size, Image.LANCZOS)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu")


def noised(picture: Image.Image, share: float) -> Image.Image:
    rng = np.random.default_rng(0)
    mixed = np.asarray(picture, dtype=np.float32) * (1 - share) + rng.normal(128, 60, (*picture.size[::-1], 3)) * share
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize(("name", "size"), [("astronaut", (451, 300)), ("coffee", (130, 97)),
                                            ("astronaut", (1024, 64))])
def test_scores_are_one_for_the_source_and_fall_as_more_is_replaced(name: str, size: tuple[int, int]) -> None:
    source = photo(name, size)
    assert retention(source, source).as_dict() == {"structure": 1.0, "colour": 1.0, "detail": 1.0}
    scores = [retention(source, noised(source, share)) for share in (0.1, 0.4, 0.8)]
    for metric in ("structure", "colour", "detail"):
        values = [getattr(score, metric) for score in scores]
        assert 1.0 > values[0] > values[1] > values[2] >= 0.0, (metric, values)


def test_each_score_sees_its_own_kind_of_change() -> None:
    source = photo("astronaut", (451, 300))
    grey = retention(source, ImageOps.grayscale(source))  # the same shapes and shading, no colour
    assert grey.structure > 0.99 and grey.detail > 0.99 and grey.colour < 0.5
    blurred = retention(source, source.filter(ImageFilter.GaussianBlur(3)))  # the same colours, less detail
    assert blurred.colour > 0.9 and blurred.detail < 0.8 and blurred.structure < 0.6
    other = retention(source, photo("coffee", (451, 300)))  # another photo altogether
    assert max(other.as_dict().values()) < 0.3
    assert retention(source, source.resize((902, 600))).structure > 0.98  # compared at one small size


def test_the_builtin_engine_records_scores_that_fall_with_strength(engine: Engine) -> None:
    source = photo("coffee", (451, 300))
    results = [engine.generate(GenerationRequest(source=source, prompt="pastel-gold", strength=strength, seed=3))
               for strength in (0.0, 0.3, 0.6, 0.9)]
    records = [result.record for result in results]
    assert records[0].retention == {"structure": 1.0, "colour": 1.0, "detail": 1.0}
    for metric in ("structure", "colour", "detail"):
        values = [record.retention[metric] for record in records]
        assert values == sorted(values, reverse=True) and values[-1] < 0.8, (metric, values)
    again = GenerationRecord.from_json(records[2].to_json())
    assert again.retention == records[2].retention
    assert json.loads(records[2].to_json())["retention"] == records[2].retention


@pytest.fixture(scope="module")
def tiny_clear(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_sd_clear

    return build_tiny_sd_clear(tmp_path_factory.mktemp("models") / "tiny-clear")


@pytest.mark.parametrize("name", [pytest.param("astronaut", marks=pytest.mark.slow), "coffee"])  # astronaut: 19 s
def test_a_tiny_model_keeps_less_as_the_strength_rises(engine: Engine, tiny_clear: Path, name: str) -> None:
    source = photo(name, (130, 97))
    kept = [engine.generate(GenerationRequest(source=source, prompt="a painting", strength=strength, seed=3,
                                              model=str(tiny_clear), steps=20)).record.retention
            for strength in (0.0, 0.1, 0.3, 0.6)]
    assert kept[0] == {"structure": 1.0, "colour": 1.0, "detail": 1.0}
    for metric in ("structure", "detail"):
        values = [scores[metric] for scores in kept]
        assert values[0] > values[1] > values[2] > values[3], (metric, values)


def test_the_finder_aims_a_tiny_model(engine: Engine, tiny_clear: Path) -> None:
    result = engine.generate(GenerationRequest(source=photo("coffee", (130, 97)), prompt="a painting",
                                               keep_structure=0.3, seed=3, model=str(tiny_clear), steps=20))
    assert result.search is not None and result.search.reachable
    assert all(round(strength * 20, 6).is_integer() for strength, _ in result.search.tries)  # whole steps only
    assert abs(result.record.retention["structure"] - 0.3) <= 0.05, result.search.describe()


# The finder on a known curve: the score a strength keeps, falling from 1 at strength 0.
def curve(strength: float) -> float:
    return 1.0 - 0.8 * strength**1.5


@pytest.mark.parametrize("target", [0.9, 0.7, 0.45, 0.25])
def test_the_finder_converges_on_a_reachable_target(target: float) -> None:
    tried: list[float] = []
    search = find_strength(lambda s: tried.append(s) or curve(s), "structure", target)
    assert search.reachable and len(tried) <= MAX_TRIES + 1
    assert abs(curve(search.strength) - target) < 0.03, search
    assert [entry[0] for entry in search.tries] == tried
    assert f"keep_structure {target:g}: strength {search.strength:.2f}" in search.describe()


def test_the_finder_reports_targets_out_of_reach() -> None:
    too_much = find_strength(lambda s: 0.6 * curve(s), "colour", 0.99)  # even the weakest keeps 0.6
    assert not too_much.reachable and too_much.strength == MIN_STRENGTH
    assert "cannot be met at any strength above 0" in too_much.describe()
    too_little = find_strength(curve, "detail", 0.1)  # strength 1 still keeps 0.2
    assert not too_little.reachable and too_little.strength == 1.0
    assert "cannot be met at any strength, 1 included" in too_little.describe()


def test_keep_structure_renders_the_strength_it_found(engine: Engine) -> None:
    source = photo("astronaut", (451, 300))
    request = GenerationRequest(source=source, prompt="pastel-gold", keep_structure=0.75, seed=5)
    result = engine.generate(request)
    assert result.search is not None and result.search.reachable
    assert result.record.strength == result.search.strength and result.record.keep_structure == 0.75
    assert abs(result.record.retention["structure"] - 0.75) <= 0.05
    assert engine.generate(request).images[0].tobytes() == result.images[0].tobytes()  # the same search again
    unreachable = engine.generate(GenerationRequest(source=source, prompt="pastel-gold", keep_structure=0.2, seed=5))
    assert unreachable.search is not None and not unreachable.search.reachable
    assert unreachable.record.strength == 1.0


def test_one_target_at_a_time_and_none_in_a_sweep(engine: Engine) -> None:
    source = photo("coffee", (130, 97))
    with pytest.raises(InvalidArgument, match="keep_colour should be left out when keep_structure is given"):
        engine.generate(GenerationRequest(source=source, prompt="fauve", keep_structure=0.5, keep_colour=0.5))
    from img2img.sweep import make_axis

    with pytest.raises(InvalidArgument, match="keep_detail should be left out of a sweep"):
        engine.sweep(GenerationRequest(source=source, prompt="fauve", keep_detail=0.5),
                     [make_axis("strength", [0.2, 0.4])])


@pytest.mark.slow  # 12 s; CI runs it with -m slow
def test_the_cli_prints_scores_aims_and_shows_them_in_info_and_the_grid(tmp_path: Path) -> None:
    source = tmp_path / "coffee.png"
    photo("coffee", (451, 300)).save(source)
    ran = img2img("run", str(source), "fauve", "--keep-structure", "0.8", "--seed", "2", "-o",
                  str(tmp_path / "out.png"))
    assert ran.returncode == 0, ran.stderr
    assert "keep_structure 0.8: strength" in ran.stdout and "kept structure 0." in ran.stdout
    info = img2img("info", str(tmp_path / "out.png"))
    assert info.returncode == 0 and "Kept structure 0." in info.stdout
    record = json.loads(read_metadata(tmp_path / "out.png").record or "{}")
    assert record["keep_structure"] == 0.8 and set(record["retention"]) == {"structure", "colour", "detail"}

    swept = img2img("sweep", str(source), "fauve", "--strength", "0.2,0.6", "--seed", "2", "-o",
                    str(tmp_path / "sweep"))
    assert swept.returncode == 0, swept.stderr
    grid = Image.open(tmp_path / "sweep" / "00003-sweep.png").convert("L")
    cell = Image.open(tmp_path / "sweep" / "00001-2.png")
    caption = np.asarray(grid)[-(grid.height - cell.height) // 2:, cell.width:]  # the strip under the cells
    assert (caption < 100).any()  # the scores are written there

    assert_one_line_error(img2img("run", str(source), "fauve", "--keep-colour", "1.5"), "--keep-colour",
                          "[0.0, 1.0]")


@pytest.mark.slow  # 32 s; CI runs it with -m slow
def test_the_search_reports_its_previews_steps_and_stops_when_told(engine: Engine, tiny_clear: Path) -> None:
    request = GenerationRequest(source=photo("coffee", (130, 97)), prompt="a painting", keep_structure=0.3, seed=3,
                                model=str(tiny_clear), steps=20)
    calls: list[tuple[int, int, int]] = []
    result = engine.generate(request, on_progress=lambda *call: calls.append(call))
    assert result.search is not None
    assert calls[-1][1] == calls[-1][2]  # the render's last step
    assert len(calls) > calls[-1][2], calls  # and the previews' steps before the render's

    class Stop(Exception):
        pass

    def stop(*_call: int) -> None:
        raise Stop

    with pytest.raises(Stop):  # the first preview's first step
        engine.generate(request, on_progress=stop)
