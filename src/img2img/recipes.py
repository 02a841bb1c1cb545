"""Recipes: a kind of change with the strength that suits it, ready to run.

A recipe names a prompt template, a strength (or a retention target: ``img2img.engine.strength_finder``), an optional
negative prompt and the built-in engine's closest named style. Its strengths follow the ranges every guide gives:
0.2 to 0.3 for a subtle restyle, 0.4 to 0.6 for a clear new style with the shapes kept, 0.7 to 0.9 for a heavy
rework. ``apply`` fills in what the user left out; what they gave wins.

The template holds ``{prompt}`` at most once, as one of its comma-separated parts; it stands for the user's prompt
and is dropped, with its comma, when there is none. Users add their own in ``recipes.toml`` in the config
directory, one table per recipe::

    [recipes.teal-orange]
    description = "cinematic teal and orange grade"
    prompt = "{prompt}, cinematic teal and orange colour grade"
    strength = 0.35
    negative_prompt = "washed out"
    style = "blue-strokes"        # with the built-in engine
    # keep_structure = 0.7        # instead of the strength: aim at a retention score

A mistake in the file is reported as one line per mistake, and the recipes without one still load.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from img2img.engine.request import KEEP_FIELDS
from img2img.errors import InvalidArgument

FILE_NAME = "recipes.toml"
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
KEYS = ("description", "prompt", "strength", "negative_prompt", "style", *KEEP_FIELDS)
MAX_TEXT = 1000


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    prompt: str  # the template: "{prompt}, watercolour portrait, ..."
    strength: float
    style: str  # the built-in engine's named style (or blend of styles)
    negative_prompt: str = ""
    keep: tuple[str, float] | None = None  # a retention target instead of the strength: ("structure", 0.7)
    origin: str = "built-in"

    def prompt_for(self, prompt: str | None) -> str:
        """The template with the user's prompt in place of ``{prompt}`` (dropped with its comma when empty)."""
        parts = [part.strip() for part in self.prompt.split(",")]
        filled = [(prompt or "").strip() if part == "{prompt}" else part for part in parts]
        return ", ".join(part for part in filled if part)

    def describe(self) -> dict[str, Any]:
        """As ``img2img recipes --json`` and ``GET /v1/recipes`` show it."""
        keep = {f"keep_{self.keep[0]}": self.keep[1]} if self.keep else {}
        return {"name": self.name, "description": self.description, "prompt": self.prompt,
                "strength": self.strength, "negative_prompt": self.negative_prompt, "style": self.style,
                "origin": self.origin, **keep}


BUILT_IN: tuple[Recipe, ...] = (
    Recipe("subtle-restyle", "colour tweaks and light cleanup; the photo stays a photo",
           "{prompt}, refined colours, soft even light, clean details", 0.25, "lilac-haze"),
    Recipe("warm-autumn", "a warm autumn palette over the same scene",
           "{prompt}, warm autumn palette, golden hour light, amber and orange tones", 0.35, "amber-impasto",
           "cold colours, blue cast"),
    Recipe("watercolour-portrait", "watercolour portrait that keeps the pose",
           "{prompt}, watercolour portrait, soft washes, wet edges, paper texture", 0.5, "sketchbook",
           "photo, harsh lines, oversaturated", ("structure", 0.7)),
    Recipe("oil-painting", "oil painting with visible strokes, shapes kept",
           "{prompt}, oil painting, visible brush strokes, rich colours", 0.55, "rust-oil", "photo, flat colours"),
    Recipe("ink-sketch", "ink drawing on cream paper",
           "{prompt}, ink drawing, fine lines, cross-hatching, cream paper", 0.55, "ink-drawing", "colour, photo"),
    Recipe("rainy-night-street", "the scene on a rainy night, neon on wet asphalt",
           "{prompt}, rainy night street, wet asphalt, neon reflections, cinematic lighting", 0.6, "night-fire",
           "daylight, dry, sunny"),
    Recipe("post-impressionist", "swirling post-impressionist brushwork",
           "{prompt}, post-impressionist painting, swirling brush strokes, thick paint", 0.6, "starry-swirl"),
    Recipe("pop-art", "a flat, bold pop-art poster",
           "{prompt}, pop art poster, flat bold colours, halftone dots", 0.65, "pop-blocks", "photo, gradients"),
    Recipe("sketch-to-colour", "a sketch or line drawing into a finished colour illustration",
           "{prompt}, colour illustration, clean line art, flat vibrant colours, finished piece", 0.8,
           "candy-sketch", "sketch, unfinished, monochrome, pencil"),
)


def load_recipes(config_dir: Path) -> tuple[dict[str, Recipe], list[str]]:
    """The built-in recipes and the user's (``recipes.toml`` in ``config_dir``; theirs replace a built-in of the
    same name), and one line per mistake found in the user's file."""
    recipes = {recipe.name: recipe for recipe in BUILT_IN}
    path = config_dir / FILE_NAME
    if not path.is_file():
        return recipes, []
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        return recipes, [f"{path}: not readable TOML ({exc}); its recipes are left out"]
    own = tables.get("recipes")
    if not isinstance(own, dict):
        return recipes, [f"{path}: should hold [recipes.NAME] tables, but has no 'recipes' table"]
    problems = []
    for name, table in own.items():
        try:
            recipes[name] = _recipe(name, table, str(path))
        except ValueError as exc:
            problems.append(f"{path}: recipe {name!r}: {exc}")
    return recipes, problems


def find_recipe(name: str, config_dir: Path) -> Recipe:
    """The recipe called ``name``; one line naming the choices (or its mistake in the user's file) otherwise."""
    recipes, problems = load_recipes(config_dir)
    own = next((problem for problem in problems if f"recipe {name!r}:" in problem), None)
    if own is not None:  # the user's, even when it would replace a built-in one
        raise InvalidArgument("recipe", "a recipe without mistakes", own)
    if name in recipes:
        return recipes[name]
    raise InvalidArgument("recipe", f"one of {', '.join(sorted(recipes))} (img2img recipes lists them)", name)


def apply(recipe: Recipe, given: Mapping[str, Any], builtin: bool) -> dict[str, Any]:
    """Request fields: ``given`` with the recipe's in what it leaves out. The prompt is the template around the given
    prompt (the built-in engine: the recipe's style, unless styles were given); the strength, or the recipe's
    retention target, unless either was given; the negative prompt unless one was given."""
    fields = dict(given)
    if builtin:
        fields["prompt"] = given.get("prompt") or recipe.style
    else:
        fields["prompt"] = recipe.prompt_for(given.get("prompt"))
        if not given.get("negative_prompt") and recipe.negative_prompt:
            fields["negative_prompt"] = recipe.negative_prompt
    if "strength" not in given and not any(given.get(name) is not None for name in KEEP_FIELDS):
        fields["strength"] = recipe.strength
        if recipe.keep is not None:
            fields[f"keep_{recipe.keep[0]}"] = recipe.keep[1]
    return fields


def _recipe(name: str, table: object, origin: str) -> Recipe:
    """One recipe from its TOML table; ValueError with the first mistake."""
    from img2img.styles.catalog import parse_styles

    if not NAME.fullmatch(name):
        raise ValueError("its name should be lowercase letters, digits and dashes (at most 40)")
    if not isinstance(table, dict):
        raise ValueError("should be a table of keys")
    unknown = [key for key in table if key not in KEYS]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (expected {', '.join(KEYS)})")
    texts = {key: table.get(key, "") for key in ("description", "prompt", "negative_prompt", "style")}
    for key, value in texts.items():
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ValueError(f"{key} should be text of at most {MAX_TEXT} characters, but got {value!r}")
    template = texts["prompt"]
    parts = [part.strip() for part in template.split(",")]
    if not template.strip() or template.count("{prompt}") > 1 or "{" in template.replace("{prompt}", "") or \
            "}" in template.replace("{prompt}", "") or ("{prompt}" in template and "{prompt}" not in parts):
        raise ValueError("prompt should be text with {prompt} at most once, as one of its comma-separated parts, "
                         f"and no other braces, but got {template!r}")
    numbers = {key: table[key] for key in ("strength", *KEEP_FIELDS) if key in table}
    for key, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{key} should be a number in [0, 1], but got {value!r}")
    targets = [key for key in KEEP_FIELDS if key in numbers]
    if len(targets) > 1:
        raise ValueError(f"{targets[1]} should be left out when {targets[0]} is given (one target at a time)")
    if "strength" not in numbers and not targets:
        raise ValueError("should give a strength (or a keep_structure, keep_colour or keep_detail target)")
    style = texts["style"] or "pastel-gold"
    try:
        parse_styles(style)
    except InvalidArgument as exc:
        raise ValueError(f"style should name built-in styles (img2img styles lists them), but got {style!r}") from exc
    keep = (targets[0].removeprefix("keep_"), float(numbers[targets[0]])) if targets else None
    return Recipe(name, texts["description"], texts["prompt"], float(numbers.get("strength", 0.6)), style,
                  texts["negative_prompt"], keep, origin)
