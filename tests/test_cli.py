"""The img2img command as a user runs it: a real process, its exit status, stdout, stderr and files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


def img2img(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from img2img.cli import main; main()", *args]
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_starts_with_examples() -> None:
    for args in (["--help"], ["run", "--help"], ["models", "--help"], ["sweep", "--help"], ["batch", "--help"],
                 ["info", "--help"], ["reproduce", "--help"]):
        result = img2img(*args)
        assert result.returncode == 0
        assert result.stdout.index("Examples") < result.stdout.index("Options")


def test_run_writes_pngs_with_seeds_and_is_byte_identical(tiny_sd, photo, tmp_path) -> None:
    args = ["run", str(photo), "a pencil sketch", "--model", str(tiny_sd), "--seed", "5", "--steps", "4", "-n", "2"]
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    run_first = img2img(*args, "-o", str(first))
    assert run_first.returncode == 0, run_first.stderr
    assert "seed 5" in run_first.stdout and "seed 6" in run_first.stdout
    assert "2 of 4 steps" in run_first.stdout
    assert img2img(*args, "-o", str(second)).returncode == 0
    names = sorted(p.name for p in first.iterdir())
    assert names == ["00001-5.png", "00002-6.png"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    text = Image.open(first / names[0]).text
    assert "Seed: 5" in text["parameters"] and '"seed": 5' in text["img2img"]


def test_output_file_is_not_overwritten_without_flag(tiny_sd, photo, tmp_path) -> None:
    target = tmp_path / "result.png"
    target.write_bytes(b"precious")
    args = ["run", str(photo), "x", "--model", str(tiny_sd), "--steps", "2", "-o", str(target)]
    assert img2img(*args).returncode == 0
    assert target.read_bytes() == b"precious"
    assert (tmp_path / "result-1.png").is_file()
    assert img2img(*args, "--overwrite").returncode == 0
    assert target.read_bytes() != b"precious"


def test_models_commands(tiny_sd, tiny_sdxl, photo, tmp_path) -> None:
    added = img2img("models", "add", "tiny", str(tiny_sd))
    assert added.returncode == 0 and "SD 1.x" in added.stdout and "(default)" in added.stdout
    assert img2img("models", "add", "xl", str(tiny_sdxl)).returncode == 0
    assert img2img("models", "default", "xl").returncode == 0
    listing = img2img("models", "list").stdout
    assert "* xl\tSDXL" in listing and "  tiny\tSD 1.x" in listing
    ran = img2img("run", str(photo), "x", "--steps", "2", "-o", str(tmp_path / "out.png"))
    assert ran.returncode == 0 and "SDXL" in ran.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--strength", "1.5"], ["--strength should be in [0.0, 1.0], but got 1.5"]),
        (["--strength", "abc"], ["'--strength'", "valid number", "(got 'abc')"]),
        (["--steps", "0"], ["--steps should be in [1, 150], but got 0"]),
        (["--cfg", "-2"], ["--cfg should be in [0.0, 30.0]"]),
        (["--sampler", "Euler z"], ["--sampler should be one of", "DPM++ 2M Karras", "'Euler z'"]),
        (["-n", "3"], ["-n should be in [1, 2], but got 3"]),
        (["--size", "big"], ["--size should be WIDTHxHEIGHT"]),
        (["-o", "/nonexistent-folder/out.png"], ["-o should be in an existing folder", "/nonexistent-folder"]),
        (["--quantize", "int4"], ["--quantize should be one of none, int8, but got 'int4'"]),
        (["--quantize", "int8", "--backend", "torch"], ["--quantize should be none unless the backend is openvino"]),
    ],
)
def test_bad_options_end_in_one_line_and_status_2(args, fragments, photo, tiny_sd) -> None:
    result = img2img("run", str(photo), "x", "--model", str(tiny_sd), *args, env={"IMG2IMG_MAX_IMAGES": "2"})
    assert_one_line_error(result, *fragments)


@pytest.mark.slow  # 25 s of command-line subprocesses; CI runs it with -m slow
def test_bad_sources_and_models_end_in_one_line_and_status_2(photo, tiny_sd, tmp_path) -> None:
    assert_one_line_error(img2img("run", str(tmp_path / "nope.jpg"), "x", "--model", str(tiny_sd)),
                          "source should be an image file", "nope.jpg")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    assert_one_line_error(img2img("run", str(not_an_image), "x", "--model", str(tiny_sd)),
                          "source should be a PNG, JPEG", "notes.png")
    assert_one_line_error(img2img("run", str(photo), "x", "--model", str(tmp_path / "missing-model")),
                          "should be a registry name", "missing-model")
    (tmp_path / "junk").mkdir()
    assert_one_line_error(img2img("run", str(photo), "x", "--model", str(tmp_path / "junk")),
                          "diffusers pipeline with a model_index.json")
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04")
    assert_one_line_error(img2img("run", str(photo), "x", "--model", str(pickle)), "--allow-pickle", "model.ckpt")
    # With no model configured the built-in style engine runs, and a free-text prompt is explained.
    assert_one_line_error(img2img("run", str(photo), "x"), "PROMPT should be built-in style names",
                          "free-text prompts need a diffusion model")
    assert_one_line_error(img2img("models", "add", "bad name!", str(tiny_sd)), "--name should be")
