"""The file workflows as a user runs them: formats, metadata read by another tool, info, convert, reproduce,
sweep, batch and the bad inputs around them (real processes, real files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from test_cli import assert_one_line_error, img2img

FAST = ["--steps", "4", "--seed", "42"]


@pytest.fixture(scope="module")
def results(tiny_sd: Path, photo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run per format, shared by the metadata tests: PNG (two seeds and a grid), JPEG and WebP."""
    folder = tmp_path_factory.mktemp("results")
    prompt = "a café at night, oil painting"
    png = img2img("run", str(photo), prompt, "--negative", "blurry", "--model", str(tiny_sd), *FAST, "-n", "2",
                  "--grid", "-o", str(folder))
    assert png.returncode == 0, png.stderr
    for name in ("result.jpg", "result.webp"):
        other = img2img("run", str(photo), prompt, "--negative", "blurry", "--model", str(tiny_sd), *FAST,
                        "-o", str(folder / name))
        assert other.returncode == 0, other.stderr
    return folder


def test_run_writes_each_format_and_a_grid(results: Path) -> None:
    names = sorted(p.name for p in results.iterdir())
    assert names == ["00001-42-grid.png", "00001-42.png", "00002-43.png", "result.jpg", "result.webp"]
    assert Image.open(results / "result.jpg").format == "JPEG"
    assert Image.open(results / "result.webp").format == "WEBP"
    grid = Image.open(results / "00001-42-grid.png")
    assert grid.width == 2 * 64 and grid.height > 48  # two cells side by side with seed captions


@pytest.mark.parametrize("name", ["00001-42.png", "result.jpg", "result.webp"])
def test_another_tool_reads_our_a1111_parameters_field_for_field(results: Path, name: str) -> None:
    from sd_parsers import ParserManager

    info = ParserManager().parse(results / name)
    assert info is not None and info.generator.name == "AUTOMATIC1111"
    sampler = info.samplers[0]
    assert sampler.name == "DPM++ 2M Karras"
    assert sampler.parameters == {"cfg_scale": "7", "seed": "42", "steps": "4"}
    assert sampler.model.name == "tiny-sd" and len(sampler.model.hash) == 10
    assert [p.value for p in sampler.prompts] == ["a café at night, oil painting"]
    assert [p.value for p in sampler.negative_prompts] == ["blurry"]
    assert info.metadata == {"Size": "64x64", "Denoising strength": "0.6", "Model family": "SD 1.x"}


def test_info_prints_parameters_and_the_json_record(results: Path, photo: Path) -> None:
    text = img2img("info", str(results / "result.jpg"))
    assert text.returncode == 0 and text.stdout.startswith("a café at night, oil painting\nNegative prompt: blurry\n")
    record = json.loads(img2img("info", str(results / "result.webp"), "--json").stdout)
    assert record["seed"] == 42 and record["steps_run"] == 2 and record["model_family"] == "SD 1.x"
    assert record["source_sha256"] and record["versions"]["torch"] and record["steps_mode"] == "diffusers"
    assert_one_line_error(img2img("info", str(photo)), "should hold generation parameters", "astronaut.png")


def test_convert_keeps_the_metadata(results: Path, tmp_path: Path) -> None:
    converted = img2img("convert", str(results / "00001-42.png"), str(tmp_path / "shared.jpg"), "--quality", "80")
    assert converted.returncode == 0, converted.stderr
    assert img2img("info", str(tmp_path / "shared.jpg")).stdout == img2img("info", str(results / "00001-42.png")).stdout
    assert_one_line_error(img2img("convert", str(results / "00001-42.png"), str(tmp_path / "x.gif")),
                          "--output should be a file name ending in .png")


@pytest.mark.slow  # 16 s; CI runs it with -m slow
def test_reproduce_writes_identical_bytes(results: Path, photo: Path, other_photo: Path, tiny_sd: Path,
                                          tmp_path: Path) -> None:
    for name in ("00002-43.png", "result.jpg"):
        again = img2img("reproduce", str(results / name), "--source", str(photo), "--model", str(tiny_sd),
                        "-o", str(tmp_path))
        assert again.returncode == 0, again.stderr
        assert "identical to" in again.stdout
        written = next(tmp_path.glob(f"*{Path(name).suffix}"))
        assert written.read_bytes() == (results / name).read_bytes()
    assert_one_line_error(img2img("reproduce", str(results / "result.jpg"), "--source", str(other_photo),
                                  "--model", str(tiny_sd)), "--source should be the image result.jpg was made from")


@pytest.mark.slow  # 16 s; CI runs it with -m slow
def test_alpha_and_exif_rotation_end_to_end(tiny_sd: Path, photo: Path, tmp_path: Path) -> None:
    cutout = Image.open(photo).convert("RGBA").resize((64, 96))
    cutout.paste((0, 0, 0, 0), (0, 0, 64, 30))
    cutout.save(tmp_path / "cutout.png")
    kept = img2img("run", str(tmp_path / "cutout.png"), "x", "--model", str(tiny_sd), *FAST, "--keep-alpha",
                   "-o", str(tmp_path / "kept.png"))
    assert kept.returncode == 0, kept.stderr
    assert Image.open(tmp_path / "kept.png").getpixel((3, 3))[3] == 0
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.open(photo).save(tmp_path / "phone.jpg", exif=exif)
    rotated = img2img("run", str(tmp_path / "phone.jpg"), "x", "--model", str(tiny_sd), *FAST,
                      "-o", str(tmp_path / "upright.png"))
    assert rotated.returncode == 0, rotated.stderr
    assert Image.open(tmp_path / "upright.png").size == (48, 64)
    assert_one_line_error(img2img("run", str(tmp_path / "cutout.png"), "x", "--model", str(tiny_sd), "--keep-alpha",
                                  "--format", "jpeg"), "--format should be png or webp with --keep-alpha")


def test_sweep_writes_every_cell_and_a_labelled_grid(tiny_sd: Path, photo: Path, tmp_path: Path) -> None:
    swept = img2img("sweep", str(photo), "watercolor", "--model", str(tiny_sd), "--steps", "4", "--seed", "7",
                    "--strength", "0.3,0.6,0.9", "--cfg", "1,7", "-o", str(tmp_path / "sweep"))
    assert swept.returncode == 0, swept.stderr
    tmp_path = tmp_path / "sweep"  # made by the command
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"{n:05d}-7.png" for n in range(1, 7)] + ["00007-sweep.png"]
    assert "strength 0.9 · cfg 7" in swept.stdout
    grid = Image.open(tmp_path / "00007-sweep.png")
    assert grid.width > 4 * 64 and grid.height > 2 * 64  # source + 3 columns, 2 rows, plus labels
    fourth = json.loads(Image.open(tmp_path / "00004-7.png").text["img2img"])
    assert (fourth["strength"], fourth["guidance_scale"]) == (0.3, 7.0)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--strength", ","], ["--strength should be a non-empty list"]),
        (["--cfg", "5,high"], ["--cfg should be floats separated by commas"]),
        (["--denoise", "0.5"], ["No such option: --denoise"]),
        (["--strength", "0.5,2"], ["--strength should be in [0.0, 1.0], but got 2.0"]),
    ],
)
def test_bad_sweeps_end_in_one_line(args: list[str], fragments: list[str], tiny_sd: Path, photo: Path) -> None:
    assert_one_line_error(img2img("sweep", str(photo), "x", "--model", str(tiny_sd), *args), *fragments)


@pytest.mark.slow  # 13 s; CI runs it with -m slow
def test_batch_carries_on_past_a_bad_file_and_resumes(tiny_sd: Path, photo: Path, tmp_path: Path) -> None:
    sources, out = tmp_path / "in", tmp_path / "out"
    sources.mkdir()
    for index in range(4):
        Image.open(photo).rotate(index * 90).save(sources / f"photo{index}.jpg")
    (sources / "broken.png").write_bytes(photo.read_bytes()[:300])
    (sources / "notes.txt").write_text("not an image, not counted")
    args = ["batch", str(sources), "sketch", "-o", str(out), "--model", str(tiny_sd), *FAST]
    first = img2img(*args)
    assert first.returncode == 1, first.stderr
    assert "done 4, skipped 0 (already there), failed 1" in first.stdout
    assert "broken.png" in first.stdout and "truncated or corrupt" in first.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"photo{i}.png" for i in range(4)]
    (out / "photo2.png").unlink()
    second = img2img(*args)
    assert "done 1, skipped 3 (already there), failed 1" in second.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--size", "100x64"], ["--size should be (width, height) multiples of 8"]),
        (["--size", "99999x64"], ["--size should be", "99999"]),
        (["--max-side", "30"], ["--max-side should be in [64, 4096], but got 30"]),
        (["--format", "gif"], ["--format should be png, jpeg or webp, but got 'gif'"]),
        (["--resize", "zoom"], ["--resize should be one of just, crop, fill, but got 'zoom'"]),
        (["--quality", "0"], ["--quality should be a whole number in [1, 100], but got 0"]),
        (["--background", "nocolour"], ["--background should be a colour name or #rrggbb"]),
        (["-o", "out.png", "--format", "webp"], ["--format should be png to match -o out.png"]),
    ],
)
def test_bad_image_options_end_in_one_line(args: list[str], fragments: list[str], tiny_sd: Path, photo: Path,
                                           tmp_path: Path) -> None:
    result = img2img("run", str(photo), "x", "--model", str(tiny_sd), *args, cwd=tmp_path)
    assert_one_line_error(result, *fragments)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_output_folder_is_refused_before_work(tiny_sd: Path, photo: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line_error(img2img("run", str(photo), "x", "--model", str(tiny_sd), "-o", str(locked)),
                              "should be writable", "locked")
    finally:
        locked.chmod(0o700)
