"""Named build recipes: TOML files holding build-engine settings, shipped with the package (``engines/recipes/``
in a checkout)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from export.errors import UserError
from export.paths import recipes_dir

STRINGS = ("model", "backend", "precision", "attention")
KEYS = {*STRINGS, "shapes", "compute_capabilities"}
MAX_RECIPE_BYTES = 16 << 10
"""The largest recipe file read (the shipped ones are a few hundred bytes)."""


def recipe_names() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def _is_ints(value: object, count: int | None = None) -> bool:
    """Whether ``value`` is a list of integers (of ``count`` of them, if given)."""
    return isinstance(value, list) and all(type(v) is int for v in value) and (count is None or len(value) == count)


def _check(recipe: dict) -> None:
    """ValueError naming the first key whose value has the wrong type or is unknown."""
    unknown = sorted(set(recipe) - KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(KEYS))}")
    for key in STRINGS:
        if key in recipe and not isinstance(recipe[key], str):
            raise ValueError(f"{key} must be a string, not {recipe[key]!r}")
    if "compute_capabilities" in recipe and not _is_ints(recipe["compute_capabilities"]):
        raise ValueError("compute_capabilities must be a list of integers such as [86, 89]")
    shapes = recipe.get("shapes", {})
    if not isinstance(shapes, dict):
        raise ValueError("shapes must be a table of NAME = [MIN, OPT, MAX]")
    for dim, value in shapes.items():
        if not _is_ints(value, 3):
            raise ValueError(f"shapes.{dim} must be [MIN, OPT, MAX] (three integers), not {value!r}")


def load_recipe(name: str) -> dict:
    """The settings of recipe ``name`` (a shipped name or a path to a .toml file); UserError naming a bad key."""
    path = Path(name) if name.endswith(".toml") else recipes_dir() / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown recipe {name!r}; shipped recipes: {', '.join(recipe_names())}")
    if path.stat().st_size > MAX_RECIPE_BYTES:  # tomllib's time and memory grow fast with nesting
        raise UserError(f"recipe {path} is not a recipe: larger than {MAX_RECIPE_BYTES >> 10} KiB")
    try:
        recipe = tomllib.loads(path.read_text())
        _check(recipe)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"recipe {path} is not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise UserError(f"recipe {path} is not a recipe: nested too deeply") from exc
    except ValueError as exc:
        raise UserError(f"recipe {path}: {exc}") from exc
    if "shapes" in recipe:
        recipe["shapes"] = {dim: tuple(value) for dim, value in recipe["shapes"].items()}
    return recipe
