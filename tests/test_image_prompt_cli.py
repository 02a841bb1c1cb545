"""Image prompts from the command line: --image-prompt with --ip-adapter, the record and infotext, reproduce with
the pictures, registering an adapter, the built-in engine's style pictures, and bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from img2img.imageio.foreign import params_from
from img2img.imageio.metadata import read_metadata
from test_cli import assert_one_line_error, img2img


@pytest.mark.slow  # 12 s; CI runs it with -m slow
def test_image_prompts_are_recorded_and_reproduce(tiny_sd, tiny_ip_adapter, photo, other_photo, tmp_path) -> None:
    out = tmp_path / "prompted.png"
    ran = img2img("run", str(photo), "a fox", "--model", str(tiny_sd), "--steps", "4", "--seed", "7", "-o", str(out),
                  "--ip-adapter", str(tiny_ip_adapter), "--image-prompt", f"{other_photo}:0.6",
                  "--image-prompt-mode", "style")
    assert ran.returncode == 0, ran.stderr
    metadata = read_metadata(out)
    assert 'IP-Adapter: "Model: ip-adapter_tiny [' in metadata.parameters and "Mode: style" in metadata.parameters
    entry = json.loads(metadata.record)["conditions"][0]
    assert entry["kind"] == "image-prompt" and entry["images"][0]["weight"] == 0.6
    assert any("the file's image prompts are not taken over" in warning  # what --params-from prints
               for warning in params_from(out).warnings)
    base = ["reproduce", str(out), "--source", str(photo), "--model", str(tiny_sd), "-o", str(tmp_path / "again.png")]
    again = img2img(*base, "--image-prompt", str(other_photo))
    assert again.returncode == 0, again.stderr
    assert Image.open(tmp_path / "again.png").tobytes() == Image.open(out).tobytes()


@pytest.mark.slow  # the command line's subprocesses; CI runs it with -m slow
def test_an_adapter_is_registered_by_name_and_found_by_its_hash(tiny_sd, tiny_ip_adapter, photo, other_photo,
                                                                tmp_path) -> None:
    added = img2img("models", "add", "tiny-ip", str(tiny_ip_adapter.parent))
    assert added.returncode == 0 and "IP-Adapter" in added.stdout, added.stdout + added.stderr
    ran = img2img("run", str(photo), "a fox", "--model", str(tiny_sd), "--steps", "2", "-o", str(tmp_path / "a.png"),
                  "--ip-adapter", "tiny-ip", "--image-prompt", str(other_photo))
    assert ran.returncode == 0, ran.stderr
    assert img2img("models", "remove", "tiny-ip").returncode == 0
    again = ["reproduce", str(tmp_path / "a.png"), "--source", str(photo), "--model", str(tiny_sd),
             "--image-prompt", str(other_photo), "-o", str(tmp_path / "b.png")]
    assert_one_line_error(img2img(*again), "made with an IP-Adapter that is here: tiny-ip (SHA-256")
    assert img2img("models", "add", "same-ip", str(tiny_ip_adapter)).returncode == 0
    found = img2img(*again)
    assert found.returncode == 0 and "IP-Adapter tiny-ip is found by its hash as same-ip" in found.stderr, found.stderr
    assert Image.open(tmp_path / "b.png").tobytes() == Image.open(tmp_path / "a.png").tobytes()


@pytest.mark.slow  # the command line's subprocesses; CI runs it with -m slow
def test_the_builtin_engine_takes_the_image_prompt_as_its_style(photo, other_photo, tmp_path) -> None:
    ran = img2img("run", str(photo), "", "--model", "builtin", "--seed", "3", "--strength", "0.7",
                  "--image-prompt", str(other_photo), "-o", str(tmp_path / "styled.png"))
    assert ran.returncode == 0, ran.stderr
    styled = img2img("run", str(photo), "", "--model", "builtin", "--seed", "3", "--strength", "0.7",
                     "--style-image", str(other_photo), "-o", str(tmp_path / "same.png"))
    assert styled.returncode == 0, styled.stderr
    assert Image.open(tmp_path / "styled.png").tobytes() == Image.open(tmp_path / "same.png").tobytes()


@pytest.mark.slow  # the command line's subprocesses; CI runs it with -m slow
def test_bad_image_prompts_get_one_line(tiny_sd, tiny_ip_adapter, photo, other_photo, tmp_path) -> None:
    base = ["run", str(photo), "a fox", "--model", str(tiny_sd), "--steps", "2", "-o", str(tmp_path / "x.png")]
    assert_one_line_error(img2img(*base, "--image-prompt", str(other_photo)), "--ip-adapter", "an IP-Adapter")
    assert_one_line_error(img2img(*base, "--ip-adapter", str(tiny_ip_adapter), "--image-prompt",
                                  f"{other_photo}:2.5"), "--image-prompt's weight", "2.5")
    assert_one_line_error(img2img(*base, "--ip-adapter", str(tiny_ip_adapter),
                                  *[arg for _ in range(5) for arg in ("--image-prompt", str(other_photo))]),
                          "--image-prompt", "at most 4")
    assert_one_line_error(img2img(*base, "--ip-adapter", "nowhere", "--image-prompt", str(other_photo)),
                          "--ip-adapter", "nowhere")
    assert not Path(tmp_path / "x.png").exists()


@pytest.mark.slow  # 12 s; CI runs it with -m slow
def test_blend_with_the_builtin_engine_and_a_diffusion_model(tiny_sd, tiny_ip_adapter, photo, other_photo,
                                                             tmp_path) -> None:
    ran = img2img("blend", str(other_photo), str(photo), "--weights", "3,1", "--grid", "--seed", "4", "--model",
                  "builtin", "-o", str(tmp_path / "mixed.png"))
    assert ran.returncode == 0, ran.stderr
    record = json.loads(read_metadata(tmp_path / "mixed.png").record)
    assert record["image_prompt_combine"] == "average" and record["strength"] == 1.0
    assert [item["weight"] for item in record["conditions"][0]["images"]] == [1.0, 1 / 3]
    sheet = Image.open(tmp_path / "mixed-blend.png")
    assert sheet.width > 2.5 * Image.open(other_photo).width, "two pictures and the blend side by side"

    made = img2img("blend", str(photo), str(other_photo), "--model", str(tiny_sd), "--ip-adapter",
                   str(tiny_ip_adapter), "--steps", "3", "--prompt", "a fox", "-o", str(tmp_path / "diffused.png"))
    assert made.returncode == 0, made.stderr
    entry = json.loads(read_metadata(tmp_path / "diffused.png").record)["conditions"][0]
    assert entry["combine"] == "average" and len(entry["images"]) == 2
    assert Image.open(tmp_path / "diffused.png").size == Image.open(photo).size, "the first picture's size"


def test_bad_blends_get_one_line(photo, other_photo, tmp_path) -> None:
    out = ["--model", "builtin", "-o", str(tmp_path / "x.png")]
    assert_one_line_error(img2img("blend", str(photo), *out), "PICTURES", "2 to 5 pictures", "'1'")
    assert_one_line_error(img2img("blend", *[str(photo)] * 6, *out), "PICTURES", "2 to 5 pictures")
    assert_one_line_error(img2img("blend", str(photo), str(other_photo), "--weights", "1,2,3", *out),
                          "--weights", "one weight per picture (2)")
    assert not (tmp_path / "x.png").exists()
