"""Where the tool finds its data and keeps what it builds, installed from a wheel or run from a checkout.

A wheel holds the plugin libraries built with it (``export/native/``), their sources (``export/native/src/``)
and the recipes (``export/recipes/``); a checkout has the sources in ``plugins/`` and the recipes in
``engines/recipes/``. Anything built later (a library the wheel lacks, TensorRT timing caches) goes to the
per-user cache directory, never into site-packages or the working folder.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent
"""The repository root when running from a checkout (it has ``plugins/`` and ``engines/``)."""
NATIVE_DIR = PACKAGE_DIR / "native"
"""The libraries a wheel was built with (absent in a checkout)."""


def _first_existing(*candidates: Path) -> Path:
    """The first of ``candidates`` that is a directory (else the last, for error messages)."""
    return next((path for path in candidates if path.is_dir()), candidates[-1])


def plugin_sources() -> Path:
    """The CMake project of the plugins: shipped in the wheel, or ``plugins/`` in a checkout."""
    return _first_existing(NATIVE_DIR / "src", CHECKOUT_DIR / "plugins")


def recipes_dir() -> Path:
    """The shipped build recipes (TOML files)."""
    return _first_existing(PACKAGE_DIR / "recipes", CHECKOUT_DIR / "engines" / "recipes")


def cache_dir() -> Path:
    """The per-user cache: ``$FOURIERFORMER_CACHE_DIR``, else the platform's (``~/.cache/fourierformer-deploy``)."""
    if os.environ.get("FOURIERFORMER_CACHE_DIR"):
        return Path(os.environ["FOURIERFORMER_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("fourierformer-deploy", appauthor=False))
