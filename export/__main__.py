"""Entry point: ``python -m export``."""

from export.cli import console

console()
