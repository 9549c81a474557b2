"""Named build recipes: TOML files holding build-engine settings, shipped with the package (``engines/recipes/``
in a checkout)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from export.errors import UserError
from export.paths import recipes_dir

KEYS = {"model", "backend", "precision", "attention", "shapes", "compute_capabilities"}


def recipe_names() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def load_recipe(name: str) -> dict:
    """The settings of recipe ``name`` (a shipped name or a path to a .toml file)."""
    path = Path(name) if name.endswith(".toml") else recipes_dir() / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown recipe {name!r}; shipped recipes: {', '.join(recipe_names())}")
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"recipe {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(recipe) - KEYS)
    if unknown:
        raise UserError(f"recipe {path} has unknown keys {unknown}; allowed: {sorted(KEYS)}")
    if "shapes" in recipe:
        recipe["shapes"] = {name: tuple(value) for name, value in recipe["shapes"].items()}
    return recipe
