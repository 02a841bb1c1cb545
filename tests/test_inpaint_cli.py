"""Inpainting on the command line: run, batch and reproduce with masks and outpaints, and their bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from img2img.imageio.metadata import read_metadata
from test_cli import assert_one_line_error, img2img


@pytest.fixture
def mask_file(tmp_path):
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (20, 10, 44, 34))
    path = tmp_path / "mask.png"
    mask.save(path)
    return path


@pytest.mark.slow  # 14 s; CI runs it with -m slow
def test_run_with_a_mask_keeps_the_rest_and_reproduces(tiny_sd, photo, mask_file, tmp_path) -> None:
    out = tmp_path / "fixed.png"
    result = img2img("run", str(photo), "a red door", "--model", str(tiny_sd), "--seed", "3", "--steps", "4",
                     "--mask", str(mask_file), "--mask-blur", "2", "--masked-content", "fill", "-o", str(out))
    assert result.returncode == 0, result.stderr
    record = json.loads(read_metadata(out).record)
    assert record["mask_blur"] == 2 and record["masked_content"] == "fill" and len(record["mask_sha256"]) == 64
    assert "Mask blur: 2" in read_metadata(out).parameters
    weights = np.asarray(Image.open(mask_file).filter(ImageFilter.GaussianBlur(2)))
    painted, source = np.asarray(Image.open(out).convert("RGB")), np.asarray(Image.open(photo).convert("RGB"))
    assert np.array_equal(painted[weights == 0], source[weights == 0])

    no_mask = img2img("reproduce", str(out), "--source", str(photo), "--model", str(tiny_sd), "-o",
                      str(tmp_path / "again.png"))
    assert_one_line_error(no_mask, "--mask should be the mask picture")
    again = img2img("reproduce", str(out), "--source", str(photo), "--mask", str(mask_file), "--model",
                    str(tiny_sd), "-o", str(tmp_path / "again.png"))
    assert again.returncode == 0, again.stderr
    assert "identical to" in again.stdout


def test_outpaint_and_a_folder_of_masks_with_the_builtin_engine(photo, mask_file, tmp_path) -> None:
    grown = tmp_path / "grown.png"
    result = img2img("run", str(photo), "bold-outline", "--outpaint", "right=32,bottom=16", "--seed", "1", "-o",
                     str(grown))
    assert result.returncode == 0, result.stderr
    assert Image.open(grown).size == (96, 64)
    sources, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    sources.mkdir(), masks.mkdir()
    Image.open(photo).save(sources / "a.png")
    Image.open(photo).save(sources / "b.png")
    Image.open(mask_file).save(masks / "a.png")
    batch = img2img("batch", str(sources), "bold-outline", "--mask", str(masks), "-o", str(out), "--seed", "1")
    assert batch.returncode == 1, batch.stderr  # b.png has no mask: reported, and the others done
    assert "done 1" in batch.stdout and "failed b.png: mask should be in" in " ".join(batch.stdout.split())
    assert json.loads(read_metadata(out / "a.png").record)["mask_sha256"]


@pytest.mark.parametrize(("args", "fragments"), [
    (["--mask-blur", "8"], ["--mask-blur should be given with --mask or --outpaint"]),
    (["--outpaint", "left=x"], ["--outpaint should be pixels for every side"]),
    (["--mask", "alpha"], ["--mask should be a source with transparent pixels"]),
    (["--mask", "{photo}", "--inpaint-area", "box"], ["--inpaint-area should be one of whole, masked"]),
    (["--mask", "{text}"], ["mask should be a PNG, JPEG"]),
])
def test_bad_inpainting_input_is_one_line_and_exit_2(args, fragments, photo, tmp_path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    args = [arg.format(photo=photo, text=text) for arg in args]
    result = img2img("run", str(photo), "bold-outline", *args, "-o", str(tmp_path / "x.png"))
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x.png").exists()
