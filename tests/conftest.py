"""Shared fixtures: the conformance vectors of ../shared/conformance."""

from __future__ import annotations

import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFORMANCE_DIR = ROOT.parent / "shared" / "conformance"


def load_vectors(name: str):
    """The parsed `{name}.json` conformance file; skips the test when the folder is absent."""
    path = CONFORMANCE_DIR / f"{name}.json"
    if not path.exists():
        pytest.skip(f"conformance vectors not found at {path}")
    return json.loads(path.read_text())
