"""Recipes: the built-in ones, the user's recipes.toml checked one line per mistake, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from img2img.errors import InvalidArgument
from img2img.imageio.metadata import read_metadata
from img2img.recipes import BUILT_IN, FILE_NAME, apply, find_recipe, load_recipes
from img2img.styles.catalog import parse_styles
from test_cli import assert_one_line_error, img2img

MINE = """
[recipes.teal-orange]
description = "cinematic teal and orange grade"
prompt = "{prompt}, cinematic teal and orange colour grade"
strength = 0.35
negative_prompt = "washed out"
style = "blue-strokes"

[recipes.pop-art]  # replaces the built-in one
prompt = "{prompt}, comic book"
keep_colour = 0.5
style = "bold-outline"

[recipes.typo]
prompt = "x"
strenght = 0.3

[recipes.too-strong]
prompt = "{prompt}, x"
strength = 1.5

[recipes.two-targets]
prompt = "x"
keep_structure = 0.5
keep_detail = 0.5

[recipes.no-style]
prompt = "x"
strength = 0.3
style = "not-a-style"

[recipes.braces]
prompt = "a {prompt} b"
strength = 0.3

[recipes.Bad_Name]
prompt = "x"
strength = 0.3
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / FILE_NAME).write_text(MINE, encoding="utf-8")
    return tmp_path


def test_the_built_in_recipes_are_sound() -> None:
    assert len(BUILT_IN) >= 8 and len({recipe.name for recipe in BUILT_IN}) == len(BUILT_IN)
    for recipe in BUILT_IN:
        parse_styles(recipe.style)  # each names the built-in engine's styles
        assert 0.2 <= recipe.strength <= 0.9 and recipe.prompt.count("{prompt}") == 1
    subtle, heavy = (next(r for r in BUILT_IN if r.name == name) for name in ("subtle-restyle", "sketch-to-colour"))
    assert subtle.strength <= 0.3 and heavy.strength >= 0.7  # the guides' ranges
    rainy = next(r for r in BUILT_IN if r.name == "rainy-night-street")
    assert rainy.prompt_for("an old harbour").startswith("an old harbour, rainy night street, ")
    assert rainy.prompt_for("").startswith("rainy night street, ")


def test_a_recipe_fills_in_only_what_is_left_out() -> None:
    portrait = next(r for r in BUILT_IN if r.name == "watercolour-portrait")
    filled = apply(portrait, {"prompt": "my aunt"}, builtin=False)
    assert filled["prompt"].startswith("my aunt, watercolour portrait")
    assert (filled["strength"], filled["keep_structure"], filled["negative_prompt"]) == (
        0.5, 0.7, portrait.negative_prompt)
    own = apply(portrait, {"prompt": "x", "strength": 0.3, "negative_prompt": "blur"}, builtin=False)
    assert own["strength"] == 0.3 and "keep_structure" not in own and own["negative_prompt"] == "blur"
    assert apply(portrait, {}, builtin=True)["prompt"] == "sketchbook"
    assert apply(portrait, {"prompt": "fauve"}, builtin=True)["prompt"] == "fauve"


def test_the_users_recipes_load_and_each_mistake_is_one_line(config: Path) -> None:
    recipes, problems = load_recipes(config)
    assert recipes["teal-orange"].origin.endswith(FILE_NAME) and recipes["teal-orange"].strength == 0.35
    assert recipes["pop-art"].keep == ("colour", 0.5)  # the user's replaced the built-in one
    assert "subtle-restyle" in recipes
    expected = {"typo": "unknown key 'strenght'", "too-strong": "strength should be a number in [0, 1], but got 1.5",
                "two-targets": "keep_detail should be left out when keep_structure is given",
                "no-style": "style should name built-in styles", "braces": "{prompt} at most once, as one of its",
                "Bad_Name": "lowercase letters, digits and dashes"}
    assert len(problems) == len(expected)
    for name, fragment in expected.items():
        line = next(problem for problem in problems if f"recipe {name!r}:" in problem)
        assert fragment in line and "\n" not in line, line
    with pytest.raises(InvalidArgument, match=r"recipe should be a recipe without mistakes.*too-strong"):
        find_recipe("too-strong", config)
    with pytest.raises(InvalidArgument, match=r"recipe should be one of .*teal-orange"):
        find_recipe("nope", config)


def test_a_broken_file_leaves_the_built_in_recipes(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("[recipes.x\nprompt = ", encoding="utf-8")
    recipes, problems = load_recipes(tmp_path)
    assert len(recipes) == len(BUILT_IN) and len(problems) == 1 and "not readable TOML" in problems[0]


def test_the_cli_lists_and_runs_recipes(config: Path, tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data

    env = {"IMG2IMG_CONFIG_DIR": str(config)}
    listed = img2img("recipes", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "teal-orange" in listed.stdout and "(yours)" in listed.stdout and "rainy-night-street" in listed.stdout
    assert listed.stderr.count("warning:") == 6 and "strenght" in listed.stderr
    as_json = json.loads(img2img("recipes", "--json", env=env).stdout)
    assert {"name": "teal-orange", "strength": 0.35}.items() <= next(
        entry for entry in as_json if entry["name"] == "teal-orange").items()

    source = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).resize((160, 120)).save(source)
    ran = img2img("run", str(source), "--recipe", "teal-orange", "--seed", "1", "-o", str(tmp_path / "out.png"),
                  env=env)
    assert ran.returncode == 0, ran.stderr
    record = json.loads(read_metadata(tmp_path / "out.png").record or "{}")
    assert (record["prompt"], record["strength"]) == ("blue-strokes", 0.35)  # the built-in engine: its style
    assert_one_line_error(img2img("run", str(source), "--recipe", "nope", env=env), "--recipe", "teal-orange")
    assert_one_line_error(img2img("run", str(source), "--recipe", "too-strong", env=env), "--recipe",
                          "strength should be a number in [0, 1]")
