"""Control units from the command line: --control, the A1111 infotext of each unit, reproduce with the units'
pictures, a sweep over a unit's weight, and bad units in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from img2img.imageio.metadata import read_metadata
from test_cli import assert_one_line_error, img2img


@pytest.fixture(scope="module")
def edges(photo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("maps") / "edges.png"
    made = img2img("preprocess", "canny", str(photo), "-o", str(path))
    assert made.returncode == 0, made.stderr
    return path


@pytest.mark.slow  # 21 s; CI runs it with -m slow
def test_two_units_are_recorded_like_a1111_and_reproduce(tiny_sd, tiny_controlnet, photo, edges, tmp_path) -> None:
    out = tmp_path / "controlled.png"
    ran = img2img("run", str(photo), "a fox", "--model", str(tiny_sd), "--steps", "4", "--seed", "7", "-o", str(out),
                  "--control", f"model={tiny_controlnet},image={edges},weight=0.8,end=0.7",
                  "--control", f"model={tiny_controlnet},preprocessor=canny,mode=prompt,threshold_a=50")
    assert ran.returncode == 0, ran.stderr
    metadata = read_metadata(out)
    assert 'ControlNet 0: "Module: none, Model: tiny-controlnet [' in metadata.parameters
    assert "Weight: 0.8, Resize Mode: Just Resize, Guidance Start: 0, Guidance End: 0.7, Control Mode: Balanced" \
        in metadata.parameters
    assert 'ControlNet 1: "Module: canny, ' in metadata.parameters and "My prompt is more important" in \
        metadata.parameters and "Threshold A: 50" in metadata.parameters
    units = json.loads(metadata.record)["conditions"]
    assert [unit["image"] for unit in units] == ["given", "source"]
    taken = img2img("run", str(photo), "a fox", "--model", str(tiny_sd), "--steps", "2", "--params-from", str(out),
                    "-o", str(tmp_path / "taken.png"))
    assert taken.returncode == 0 and "the file's 2 control units are not taken over" in taken.stderr, taken.stderr

    base = ["reproduce", str(out), "--source", str(photo), "--model", str(tiny_sd)]
    assert_one_line_error(img2img(*base, "-o", str(tmp_path / "x.png")), "--control-image",
                          "the control picture of unit 0")
    assert_one_line_error(img2img(*base, "--control-image", str(photo), "-o", str(tmp_path / "x.png")),
                          "--control-image", "but got 'a picture with SHA-256")
    with_picture = [*base, "--control-image", str(edges), "-o", str(tmp_path / "again.png")]
    assert_one_line_error(img2img(*with_picture), "made with a ControlNet that is here: tiny-controlnet (SHA-256")
    assert img2img("models", "add", "edges-net", str(tiny_controlnet)).returncode == 0
    again = img2img(*with_picture)
    assert again.returncode == 0, again.stderr
    assert "ControlNet tiny-controlnet is found by its hash as edges-net" in again.stderr
    # The same pixels; the record names the ControlNet as it is now called.
    assert Image.open(tmp_path / "again.png").tobytes() == Image.open(out).tobytes()


def test_a_sweep_over_a_units_weight(tiny_sd, tiny_controlnet, photo, edges, tmp_path) -> None:
    swept = img2img("sweep", str(photo), "a fox", "--model", str(tiny_sd), "--steps", "3", "--seed", "2",
                    "--control", f"model={tiny_controlnet},image={edges}", "--control-weights", "0,1,2",
                    "-o", str(tmp_path))
    assert swept.returncode == 0, swept.stderr
    cells = sorted(tmp_path.glob("0000[1-3]-*.png"))
    weights = [json.loads(read_metadata(cell).record)["conditions"][0]["weight"] for cell in cells]
    assert weights == [0.0, 1.0, 2.0]
    pictures = [Image.open(cell).tobytes() for cell in cells]
    assert len(set(pictures)) == 3, "each weight gives its own picture"
    assert "control_weight 2" in swept.stdout


@pytest.mark.parametrize(("unit", "fragments"), [
    ("tiny-controlnet", ["--control should be KEY=VALUE pairs"]),
    ("model=CN,weight=heavy", ["--control's weight should be a number", "'heavy'"]),
    ("model=CN,weight=2.5", ["--control's weight should be in [0.0, 2.0]", "2.5"]),
    ("model=CN,start=0.9,end=0.1", ["--control's end should be at least start (0.9)"]),
    ("model=CN,preprocessor=depth-magic", ["--control's preprocessor should be one of none, canny"]),
    ("model=CN,colour=red", ["--control's colour should be one of model, image, weight"]),
    ("image=x.png", ["--control's model should be a ControlNet's or an adapter's name or path"]),
    ("model=nothing-here", ["--control's model should be a ControlNet or T2I-Adapter: a name registered"]),
    ("model=MODEL", ["--control's model should be a ControlNet or a T2I-Adapter", "a diffusers pipeline folder"]),
    ("model=CN,image=missing.png", ["control.image should be an image file", "missing.png does not exist"]),
])
def test_bad_units_are_one_line_and_exit_2(unit, fragments, tiny_sd, tiny_controlnet, photo, tmp_path) -> None:
    unit = unit.replace("CN", str(tiny_controlnet)).replace("MODEL", str(tiny_sd))
    result = img2img("run", str(photo), "a fox", "--model", str(tiny_sd), "--steps", "2", "--control", unit,
                     "-o", str(tmp_path / "x.png"))
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x.png").exists()


def test_a_batch_gives_each_file_its_own_map(tiny_sd, tiny_controlnet, photo, other_photo, tmp_path) -> None:
    import shutil

    sources = tmp_path / "in"
    sources.mkdir()
    for path in (photo, other_photo):
        shutil.copy(path, sources / path.name)
    out = tmp_path / "out"
    batch = img2img("batch", str(sources), "a fox", "--model", str(tiny_sd), "--steps", "2", "--seed", "1",
                    "--control", f"model={tiny_controlnet},preprocessor=canny", "-o", str(out))
    assert batch.returncode == 0, batch.stderr
    hashes = {json.loads(read_metadata(path).record)["source_sha256"]: json.loads(read_metadata(path).record)[
        "conditions"][0]["image_sha256"] for path in sorted(out.glob("*.png"))}
    assert len(hashes) == 2 and all(source == picture for source, picture in hashes.items()), \
        "each file's unit reads that file"
