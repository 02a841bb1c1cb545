"""The web studio in headless Chromium (Debian's package, driven by Playwright) against a real server process.

Each test saves a screenshot under ``.artifacts/studio`` (or ``$IMG2IMG_SCREENSHOTS``).
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from server_process import ServerProcess, serving_tiny

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("IMG2IMG_SCREENSHOTS", Path(__file__).parent.parent / ".artifacts" / "studio"))
# As root, without a sandbox; no background traffic (this machine's network is closed).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the studio tests (apt-get install chromium)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path) -> Iterator[ServerProcess]:
    yield from serving_tiny(tmp_path_factory, tiny_sd, "studio", model="builtin")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, server: ServerProcess, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True, bypass_csp=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(str(error)))
    opened.goto(server.url)
    opened.wait_for_function("document.querySelector('#model').options.length > 0")
    yield opened
    SHOTS.mkdir(parents=True, exist_ok=True)
    opened.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not problems, problems


@pytest.fixture
def big_photo(tmp_path: Path) -> Path:
    """The astronaut at 192x192: small enough to be quick, big enough to look at."""
    from skimage import data

    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((192, 192), Image.LANCZOS).save(path)
    return path


def _upload(page: Any, path: Path) -> None:
    page.set_input_files("#source-file", str(path))
    page.wait_for_function("document.querySelector('#source-info').textContent.includes('px')")


def _record_statuses(page: Any) -> None:
    page.evaluate("""() => {
        window.statuses = [];
        new MutationObserver(() => window.statuses.push(document.querySelector('#status-text').textContent))
            .observe(document.querySelector('#status-text'), {childList: true, characterData: true, subtree: true});
    }""")


def _wait_result(page: Any) -> None:
    page.wait_for_selector("#compare:not([hidden])", timeout=120_000)
    page.wait_for_function("document.querySelector('#compare-after').complete && "
                           "document.querySelector('#compare-after').naturalWidth > 0")


def _drag_across(page: Any, selector: str, start: float, end: float, steps: int) -> None:
    """Drag the mouse across the middle of an element, from one share of its width to another (scrolled into view
    first, as a person would)."""
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * start, middle)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * end, middle, steps=steps)
    page.mouse.up()


def test_generate_shows_progress_then_compare_by_drag_and_keyboard(page: Any, photo: Path, server: ServerProcess
                                                                   ) -> None:
    # The defaults and limits come from the server's field table, not from the page.
    page.wait_for_function("document.querySelector('#strength-value').textContent === '0.60'")
    assert page.get_attribute("#steps", "max") == "150" and page.get_attribute("#guidance", "max") == "30"
    assert page.get_attribute("#cache-steps", "max") == "10" and page.get_attribute("#merge-tokens", "max") == "0.75"
    assert page.get_attribute("#merge-levels", "max") == "4"
    _upload(page, photo)
    assert "64 × 48 px" in page.text_content("#source-info") and "small" in page.text_content("#source-info")
    page.select_option("#model", "tiny")
    assert page.is_visible("#prompt") and not page.is_visible("#style")
    page.fill("#prompt", "a red boat at sea")
    page.click("button[data-strength='0.8']")
    assert page.input_value("#strength") == "0.8" and page.text_content("#strength-value") == "0.80"
    page.click("#advanced summary")
    page.fill("#steps", "40")
    page.fill("#cache-steps", "2")
    page.fill("#seed", "42")
    page.check("#seed-lock")
    _record_statuses(page)
    page.click("#generate")
    _wait_result(page)
    statuses = page.evaluate("window.statuses")
    assert any("step" in text and "of 32" in text for text in statuses), statuses
    assert page.get_attribute("#live-preview", "src").startswith("data:image/jpeg")
    assert "seed 42" in page.text_content("#result-caption")
    job, _image = _job_images(server)
    assert job["request"]["cache_steps"] == 2 and "Cache steps: 2" in job["images"][0]["parameters"]

    _drag_across(page, "#compare", 0.25, 0.75, steps=5)
    assert 70 <= int(page.get_attribute("#compare-handle", "aria-valuenow")) <= 80
    page.focus("#compare-handle")
    page.keyboard.press("Home")
    assert page.get_attribute("#compare-handle", "aria-valuenow") == "0"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#compare-handle", "aria-valuenow") == "10"
    page.keyboard.press("End")
    assert page.get_attribute("#compare-handle", "aria-valuenow") == "100"
    page.keyboard.press("PageDown")
    assert page.get_attribute("#compare-handle", "aria-valuenow") == "75"


def test_sweep_shows_three_strengths_side_by_side(page: Any, big_photo: Path) -> None:
    _upload(page, big_photo)
    page.select_option("#style", "fauve")
    page.fill("#sweep-2", "0.55")
    page.click("#sweep")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 3", timeout=120_000)
    _wait_result(page)
    labels = page.locator("#grid .card span").all_text_contents()
    assert labels == ["strength 0.3", "strength 0.55", "strength 0.7"]
    # Under each, how much of the source it kept: less structure and detail as the strength rises.
    kept = page.locator("#grid .card .kept").all_text_contents()
    scores = [dict(re.findall(r"(\w+) (\d\.\d\d)", text)) for text in kept]
    assert all(set(score) == {"structure", "colour", "detail"} for score in scores), kept
    assert float(scores[0]["structure"]) > float(scores[1]["structure"]) > float(scores[2]["structure"])
    page.locator("#grid .card").nth(2).click()
    page.wait_for_function("document.querySelector('#result-caption').textContent.includes('strength 0.7')")
    assert page.get_attribute("#grid .card >> nth=2", "aria-pressed") == "true"
    assert page.text_content("#result-kept") == f"Kept of the source: {kept[2]}"


def test_keep_about_this_much_finds_the_strength(page: Any, big_photo: Path) -> None:
    _upload(page, big_photo)
    page.select_option("#style", "fauve")
    assert page.is_disabled("#keep-value")
    page.select_option("#keep-metric", "structure")
    page.fill("#keep-value", "0.8")
    page.dispatch_event("#keep-value", "input")
    assert page.is_disabled("#strength") and page.text_content("#keep-output") == "0.80"
    page.click("#generate")
    _wait_result(page)
    page.wait_for_function("document.querySelector('#result-notes').textContent.includes('keep_structure 0.8')")
    found = re.search(r"strength (\d\.\d+)", page.text_content("#result-caption") or "")
    assert found and f"strength {float(found[1]):.2f}" in page.text_content("#result-notes")
    kept = re.search(r"structure (\d\.\d\d)", page.text_content("#result-kept") or "")
    assert kept and abs(float(kept[1]) - 0.8) <= 0.05
    page.select_option("#keep-metric", "")
    assert page.is_enabled("#strength") and page.is_disabled("#keep-value")


def test_a_recipe_sets_the_controls_for_either_engine(page: Any, big_photo: Path) -> None:
    _upload(page, big_photo)
    page.select_option("#recipe", "rainy-night-street")
    assert page.input_value("#style") == "night-fire" and page.input_value("#strength") == "0.6"
    assert page.text_content("#recipe-note") == "strength 0.6"
    page.select_option("#recipe", "watercolour-portrait")  # a recipe that aims at a retention score
    assert page.input_value("#keep-metric") == "structure" and page.input_value("#keep-value") == "0.7"
    assert page.is_disabled("#strength")
    page.select_option("#model", "tiny")
    page.fill("#prompt", "a lighthouse")
    page.select_option("#recipe", "ink-sketch")
    assert page.input_value("#prompt") == "a lighthouse, ink drawing, fine lines, cross-hatching, cream paper"
    assert page.input_value("#negative") == "colour, photo" and page.input_value("#keep-metric") == ""
    page.click("#generate")
    _wait_result(page)
    assert "strength 0.55" in page.text_content("#result-caption")


def test_variations_grid_and_download_in_each_format(page: Any, big_photo: Path) -> None:
    _upload(page, big_photo)
    page.select_option("#style", "ribbons")
    page.fill("#seed", "100")
    page.check("#seed-lock")
    page.fill("#variation-count", "3")
    page.click("#variations")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 3", timeout=120_000)
    assert page.locator("#grid .card span").all_text_contents() == ["seed 100", "seed 101", "seed 102"]
    _wait_result(page)
    for fmt, kind in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
        page.select_option("#download-format", fmt)
        with page.expect_download() as download:
            page.click("#download")
        saved = download.value
        assert saved.suggested_filename.endswith(".jpg" if fmt == "jpeg" else f".{fmt}")
        picture = Image.open(io.BytesIO(Path(saved.path()).read_bytes()))
        assert picture.format == kind and picture.size == (192, 192)
    page.click("#copy-params")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "Seed: 100" in copied
    page.click("#show-params")
    assert "Seed: 100" in page.text_content("#params-text")
    page.keyboard.press("Escape")


def test_iterate_then_history_after_reload(page: Any, big_photo: Path) -> None:
    _upload(page, big_photo)
    page.select_option("#style", "pastel-gold")
    page.click("#generate")
    _wait_result(page)
    first_source = page.get_attribute("#source-preview", "src")
    page.click("#iterate")
    page.wait_for_function(f"document.querySelector('#source-preview').src !== {first_source!r}")
    assert "192 × 192 px" in page.text_content("#source-info")
    page.select_option("#style", "fauve")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#result-caption').textContent.startsWith('fauve')",
                           timeout=120_000)

    page.reload()
    page.wait_for_function("document.querySelectorAll('#history .card').length >= 2")
    newest = page.locator("#history .card").first
    assert "fauve" in newest.text_content()
    newest.click()
    _wait_result(page)
    assert page.input_value("#style") == "fauve"
    assert page.is_checked("#seed-lock")


def test_a_non_image_file_gets_an_inline_error(page: Any, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    page.set_input_files("#source-file", str(notes))
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "not an image" in error.text_content() and "notes.txt" in error.text_content()
    page.click("#generate")
    assert "Choose a source image" in error.text_content()


def test_a_strip_no_model_can_paint_is_refused_inline(page: Any, tmp_path: Path) -> None:
    from corpus import strip_png

    strip = tmp_path / "strip.png"
    strip.write_bytes(strip_png(20_000, 1))
    page.set_input_files("#source-file", str(strip))
    error = page.locator("#error")
    if not error.is_visible():  # the browser read it: the server refuses it when it is submitted
        page.wait_for_function("document.querySelector('#source-info').textContent.includes('px')")
        page.click("#generate")
    error.wait_for(state="visible")
    assert "16 times longer than it is wide" in error.text_content() or "not an image" in error.text_content()
    assert page.locator("#compare").is_hidden()


def test_a_dropped_picture_offers_the_settings_it_was_made_with(page: Any, tmp_path: Path) -> None:
    from foreign_files import comfyui_graph

    made = tmp_path / "ComfyUI_00012_.png"
    made.write_bytes(comfyui_graph())
    _upload(page, made)
    found = page.locator("#params-found")
    found.wait_for(state="visible")
    text = page.text_content("#params-text")
    assert "ComfyUI" in text and "a lighthouse at dusk" in text and "seed 1234" in text and "DPM++ 2M Karras" in text
    assert "2 samplers" in page.text_content("#params-warnings")
    page.click("#params-use")
    assert page.input_value("#model") == "tiny"  # from the built-in engine to a diffusion model
    assert page.input_value("#prompt") == "a lighthouse at dusk, oil painting"
    assert page.input_value("#negative") == "blurry, text"
    assert (page.input_value("#steps"), page.input_value("#guidance")) == ("20", "6.5")
    assert page.input_value("#sampler") == "DPM++ 2M Karras" and page.input_value("#seed") == "1234"
    assert page.is_checked("#seed-lock") and page.text_content("#strength-value") == "0.55"
    assert found.is_hidden()


def _phone(browser: Any, server: ServerProcess, photo: Path) -> tuple[Any, Any]:
    """A phone-sized touch context and its page, with ``photo`` as the source."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  bypass_csp=True)
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    _upload(page, photo)
    return context, page


def test_fits_a_phone_and_works_by_keyboard(browser: Any, server: ServerProcess, big_photo: Path) -> None:
    context, page = _phone(browser, server, big_photo)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.focus("#style")
    page.keyboard.press("Tab")  # the style picture's drop area is a label: the next stop is its file input
    for _ in range(12):
        if page.evaluate("document.activeElement.id") == "generate":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "generate"
    page.keyboard.press("Enter")
    page.wait_for_selector("#compare:not([hidden])", timeout=120_000)
    page.screenshot(path=str(SHOTS / "phone.png"), full_page=True)
    box = page.locator("#compare").bounding_box()
    assert box["width"] <= 390
    context.close()


def test_asks_for_the_api_key_once(browser: Any, tmp_path: Path) -> None:
    keyed = ServerProcess(tmp_path / "data", tmp_path / "config", model="builtin")
    key = keyed.command("keys", "add", "dora").stdout.strip()
    keyed.start()
    try:
        context = browser.new_context(bypass_csp=True)
        page = context.new_page()
        page.goto(keyed.url)
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key", "i2i_wrong")
        page.click("#key-form button")
        page.wait_for_selector("#key-error:not([hidden])")
        page.fill("#key", key)
        page.click("#key-form button")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        assert not page.is_visible("#key-dialog")
        page.reload()
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        assert not page.is_visible("#key-dialog")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "api-key.png"))
        context.close()
    finally:
        keyed.stop()


def _job_images(server: ServerProcess) -> tuple[dict[str, Any], Image.Image]:
    """The newest job and its first image, read through the API."""
    with server.client() as client:
        job = client.get("/v1/jobs?limit=1").json()["jobs"][0]
        image = Image.open(io.BytesIO(client.get(job["images"][0]["url"]).content)).convert("RGB")
    return job, image


def test_paint_a_mask_undo_and_inpaint(page: Any, server: ServerProcess, big_photo: Path) -> None:
    import numpy as np

    _upload(page, big_photo)
    page.click("#inpaint-panel summary")
    assert page.input_value("#inpaint-area") == "whole" and page.input_value("#mask-blur") == "4"  # the table's
    _drag_across(page, "#mask-canvas", 0.2, 0.8, steps=10)
    painted = "document.querySelector('#mask-canvas').getContext('2d').getImageData(0, 0, 192, 192).data" \
              ".filter((v, i) => i % 4 === 3 && v > 0).length"
    first = page.evaluate(painted)
    assert first > 192 * 8  # a stroke the width of the brush across most of the picture
    page.click("#mask-invert")
    assert page.evaluate(painted) > 192 * 192 - first
    page.click("#mask-undo")
    assert page.evaluate(painted) == first
    page.select_option("#masked-content", "fill")
    page.fill("#mask-blur", "2")
    page.click("#generate")
    _wait_result(page)
    job, image = _job_images(server)
    assert job["request"]["inpaint"]["masked_content"] == "fill" and job["request"]["inpaint"]["mask_blur"] == 2
    out, source = np.asarray(image, dtype=int), np.asarray(Image.open(big_photo).convert("RGB"), dtype=int)
    assert np.array_equal(out[:40], source[:40]) and np.array_equal(out[-40:], source[-40:])  # far from the stroke
    assert np.abs(out[90:102, 60:130] - source[90:102, 60:130]).mean() > 10  # under it


def test_outpaint_buttons_grow_the_picture(page: Any, server: ServerProcess, big_photo: Path) -> None:
    _upload(page, big_photo)
    page.click("#inpaint-panel summary")
    page.click("button[data-outpaint='2']")
    page.click("button[data-outpaint='2']")
    page.click("button[data-outpaint='3']")
    assert page.text_content("[data-outpaint-value]") == "Adds right 256, bottom 128 px"
    page.click("#generate")
    _wait_result(page)
    job, image = _job_images(server)
    assert job["request"]["inpaint"]["outpaint"] == [0, 0, 256, 128] and image.size == (192 + 256, 192 + 128)


def test_the_brush_follows_touch_on_a_phone(browser: Any, server: ServerProcess, big_photo: Path) -> None:
    context, page = _phone(browser, server, big_photo)
    page.tap("#inpaint-panel summary")
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()
    touch = context.new_cdp_session(page)
    y = box["y"] + box["height"] / 2
    points = [box["x"] + box["width"] * share for share in (0.2, 0.4, 0.6, 0.8)]
    touch.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": points[0], "y": y}]})
    for x in points[1:]:
        touch.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    row = page.evaluate("""() => {
        const data = document.querySelector('#mask-canvas').getContext('2d').getImageData(0, 96, 192, 1).data;
        return [...data].filter((v, i) => i % 4 === 3 && v > 0).length; }""")
    assert row > 192 * 0.5, "the stroke runs along the finger's path"
    page.screenshot(path=str(SHOTS / "phone-mask.png"), full_page=True)
    context.close()


@pytest.mark.slow  # 16 s; CI runs it with -m slow
def test_control_units_with_map_previews(page: Any, server: ServerProcess, big_photo: Path, tiny_controlnet: Path,
                                         tmp_path: Path) -> None:
    from img2img.engine.preprocessors import preprocess
    from img2img.models.registry import ModelRegistry

    ModelRegistry(server.config_dir).add_addon("edges-net", tiny_controlnet, "controlnet")
    page.reload()
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.select_option("#model", "tiny")
    _upload(page, big_photo)
    page.click("#control-panel summary")
    page.click("[data-add-unit]")
    unit = page.locator("#control-panel fieldset.unit").nth(0)
    assert unit.locator("select").nth(0).input_value() == "edges-net"
    unit.locator("select").nth(1).select_option("canny")
    page.wait_for_function("[...document.querySelectorAll('#control-panel img.map')].some(i => i.alt.includes('canny')"
                           " && i.complete && i.naturalWidth === 192)")
    shown = page.evaluate("""() => { const img = document.querySelector('#control-panel img.map');
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const x = c.getContext('2d'); x.drawImage(img, 0, 0);
        return Array.from(x.getImageData(0, 0, c.width, c.height).data.filter((v, i) => i % 4 === 0)); }""")
    expected = list(preprocess("canny", Image.open(big_photo).convert("RGB")).getchannel(0).getdata())
    assert shown == expected, "the preview is the map the unit will use"
    unit.locator("input[type=range]").fill("1.5")
    page.click("[data-add-unit]")
    own = tmp_path / "lines.png"
    Image.new("RGB", (192, 192), "black").save(own)
    page.locator("#control-panel fieldset.unit").nth(1).locator("input[type=file]").set_input_files(str(own))
    page.fill("#prompt", "a marble statue")
    page.click("#generate")
    _wait_result(page)
    job, _image = _job_images(server)
    units = job["request"]["control"]
    assert [(u["model"], u["preprocessor"], u["weight"]) for u in units] == [("edges-net", "canny", 1.5),
                                                                             ("edges-net", "none", 1.0)]
    assert "ControlNet 1" in job["images"][0]["parameters"]
    page.locator("#control-panel fieldset.unit").nth(1).get_by_role("button", name="Remove").click()
    assert page.locator("#control-panel fieldset.unit").count() == 1


def test_describe_fills_the_prompt_from_the_source(page: Any, big_photo: Path) -> None:
    page.select_option("#model", "tiny")
    page.click("#describe")
    assert "Choose a source image first" in page.text_content("#error")
    _upload(page, big_photo)
    page.click("#describe")
    page.wait_for_function("document.querySelector('#prompt').value.includes('palette')")
    assert page.input_value("#negative") and "colour, light and focus only" in page.text_content("#describe-note")


def test_image_prompts_and_a_blend(page: Any, server: ServerProcess, big_photo: Path, tiny_ip_adapter: Path,
                                   tmp_path: Path) -> None:
    from skimage import data

    from img2img.models.registry import ModelRegistry

    ModelRegistry(server.config_dir).add_addon("tiny-ip", tiny_ip_adapter, "ip-adapter")
    coffee, cat = tmp_path / "coffee.png", tmp_path / "cat.png"
    Image.fromarray(data.coffee()).resize((120, 80)).save(coffee)
    Image.fromarray(data.chelsea()).resize((90, 60)).save(cat)
    page.reload()
    page.wait_for_function("document.querySelector('#ip-adapter').options.length > 0")
    page.select_option("#model", "tiny")
    _upload(page, big_photo)
    page.click("#image-prompt-panel summary")
    page.locator("#image-prompt-panel [data-add]").set_input_files([str(coffee), str(cat)])
    assert page.locator("#image-prompt-panel .picture").count() == 2
    page.get_by_label("Weight of reference picture 2").fill("0.5")
    page.select_option("#image-prompt-mode", "style")
    page.fill("#prompt", "a cup of tea")
    page.click("#generate")
    _wait_result(page)
    job, _image = _job_images(server)
    assert job["request"]["image_prompts"] == [{"weight": 1.0}, {"weight": 0.5}]
    assert job["request"]["ip_adapter"] == "tiny-ip" and job["request"]["image_prompt_mode"] == "style"
    assert 'IP-Adapter: "Model: tiny-ip [' in job["images"][0]["parameters"]

    page.click("#blend-panel summary")
    assert page.is_disabled("#blend")
    page.locator("#blend-panel [data-add]").set_input_files([str(cat), str(coffee)])
    page.get_by_label("Weight of blend picture 1").fill("2")
    page.select_option("#model", "builtin")
    page.click("#blend")
    page.wait_for_function("document.querySelector('#result-caption').textContent.includes('blend of 2 pictures')",
                           timeout=120_000)
    job, _image = _job_images(server)
    assert job["request"]["image_prompt_combine"] == "average" and job["request"]["strength"] == 1
    assert [entry["weight"] for entry in job["request"]["image_prompts"]] == [1.0, 0.5]


def test_an_edit_model_shows_image_guidance(page: Any, server: ServerProcess, big_photo: Path,
                                            tiny_sd_edit: Path) -> None:
    from img2img.models.registry import ModelEntry, ModelRegistry

    ModelRegistry(server.config_dir).add(ModelEntry("pix2pix", str(tiny_sd_edit)))
    page.reload()
    page.wait_for_function("[...document.querySelector('#model').options].some(o => o.value === 'pix2pix')")
    assert "SD 1.x edit" in page.locator("#model option[value=pix2pix]").text_content()
    page.select_option("#model", "tiny")
    assert page.is_hidden("#image-cfg-panel")
    page.select_option("#model", "pix2pix")
    assert page.is_visible("#image-cfg-panel") and page.input_value("#image-cfg") == "1.5"
    _upload(page, big_photo)
    page.fill("#prompt", "make it winter")
    page.locator("#image-cfg").fill("2.5")
    assert page.text_content("#image-cfg-value") == "2.5"
    page.click("#generate")
    _wait_result(page)
    job, _image = _job_images(server)
    assert job["request"]["image_cfg"] == 2.5 and "Image CFG scale: 2.5" in job["images"][0]["parameters"]


@pytest.mark.slow  # 18 s; CI runs it with -m slow
def test_an_sd3_model_offers_its_own_samplers_and_no_control_units(page: Any, server: ServerProcess, big_photo: Path,
                                                                   tiny_sd3: Path) -> None:
    from img2img.models.registry import ModelEntry, ModelRegistry

    ModelRegistry(server.config_dir).add(ModelEntry("sd3", str(tiny_sd3)))
    page.reload()
    page.wait_for_function("[...document.querySelector('#model').options].some(o => o.value === 'sd3')")
    page.select_option("#model", "tiny")
    page.click("#advanced summary")
    page.select_option("#sampler", "LMS")
    assert page.is_visible("#control-panel")
    page.select_option("#model", "sd3")
    assert "SD 3.x" in page.locator("#model option[value=sd3]").text_content()
    assert page.is_hidden("#control-panel") and page.input_value("#sampler") == ""  # LMS is not one of its own
    assert page.is_disabled("#sampler option[value=LMS]") and page.is_enabled("#sampler option[value=Heun]")
    _upload(page, big_photo)
    page.fill("#prompt", "an oil painting")
    page.select_option("#sampler", "Heun")
    page.click("#generate")
    _wait_result(page)
    job, _image = _job_images(server)
    assert job["request"]["sampler"] == "Heun" and "Model family: SD 3.x" in job["images"][0]["parameters"]
