"""Shared test fixtures and the one place that decides where test data comes from.

Test data (Darknet conformance cases, reference cfgs, images, coco.names) is looked up in
``../shared/`` beside the project first (it may hold more, e.g. every layer of the large
conformance cases), then in the copies vendored into ``tests/data/`` (see its README.md).
The real yolov3-tiny weights (35 MB) are not vendored: they come from ``../shared/models/``,
else from the user cache that ``netsurgery.fetch`` fills (downloading once, sha256-checked).
A test skips, with the reason, only when a file is in none of these places."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from netsurgery.errors import NetsurgeryError
from netsurgery.fetch import cache_dir, fetch_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VENDORED = Path(__file__).resolve().parent / "data"

# Data files that are deliberately not in tests/data/, and the model `fetch` gets them from.
FETCHED = {("models", "yolov3-tiny.weights"): "yolov3-tiny",
           ("conformance", "yolov3-tiny-coco", "net.weights"): "yolov3-tiny"}


def find_data(*parts: str) -> Path | None:
    """``../shared/<parts>`` when it exists, else ``tests/data/<parts>``, else None.

    For collection-time globbing (``find_data("darknet-cfg-all")``); tests use data_path."""
    for root in (SHARED, VENDORED):
        path = root.joinpath(*parts)
        if path.exists():
            return path
    return None


def data_path(*parts: str) -> Path:
    """A test data file or folder: ../shared, then tests/data, then (real weights) the fetch
    cache or a download; skips the test with the reason when it is nowhere to be had."""
    path = find_data(*parts)
    if path is not None:
        return path
    if tuple(parts) in FETCHED:
        return fetched_weights(FETCHED[tuple(parts)])
    pytest.skip(f"{'/'.join(parts)} is in neither {SHARED} nor {VENDORED} "
                f"(see tests/data/README.md for what is vendored and why)")


shared_path = data_path  # the former name, kept for tests written before tests/data existed


@functools.cache
def _fetch(name: str) -> Path | str:
    """The verified weights file of ``name`` in the user cache, or why it could not be had."""
    try:
        return fetch_model(name, cache_dir()).weights
    except NetsurgeryError as exc:
        return str(exc)


def fetched_weights(name: str) -> Path:
    """``name``'s official weights through ``netsurgery.fetch`` (cached), or skip saying why."""
    got = _fetch(name)
    if isinstance(got, str):
        pytest.skip(f"real {name} weights unavailable: not in {SHARED / 'models'}, and {got}")
    return got


@pytest.fixture
def shared():
    return data_path


@pytest.fixture(scope="session")
def yolov3_tiny() -> tuple[Path, Path]:
    """(cfg, weights) of the real COCO yolov3-tiny."""
    return (data_path("darknet-cfg", "yolov3-tiny.cfg"),
            data_path("models", "yolov3-tiny.weights"))
