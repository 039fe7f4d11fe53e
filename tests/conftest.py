"""Shared test fixtures and the one place that decides where test data comes from.

Test data (Darknet conformance cases, reference cfgs, images, coco.names) is looked up in
``../shared/`` beside the project first (it may hold more, e.g. every layer of the large
conformance cases), then in the copies vendored into ``tests/data/`` (see its README.md).
Two weights files are not vendored: the real yolov3-tiny (35 MB) comes from
``../shared/models/``, else from the user cache that ``netsurgery.fetch`` fills (downloading
once, sha256-checked); yolov4-tiny-160's random Darknet weights (24 MB) are rebuilt bit for
bit from a 67 KB part (darknet_init.py). A test skips, with the reason, only when a file is
to be had nowhere."""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from darknet_init import rebuild_weights

from netsurgery.errors import NetsurgeryError
from netsurgery.fetch import cache_dir, fetch_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VENDORED = Path(__file__).resolve().parent / "data"

# Data files that are deliberately not in tests/data/, and how a test gets them instead.
NOT_VENDORED = {
    ("models", "yolov3-tiny.weights"): lambda: fetched_weights("yolov3-tiny"),
    ("conformance", "yolov3-tiny-coco", "net.weights"): lambda: fetched_weights("yolov3-tiny"),
    ("conformance", "yolov4-tiny-160", "net.weights"): lambda: rebuilt_weights("yolov4-tiny-160"),
}


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
    if tuple(parts) in NOT_VENDORED:
        return NOT_VENDORED[tuple(parts)]()
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


_REBUILT = tempfile.TemporaryDirectory(prefix="netsurgery-tests-")  # removed at exit


@functools.cache
def rebuilt_weights(case: str) -> Path:
    """A conformance case's ``net.weights`` rebuilt from its vendored ``weights_init.npz``
    (once per session; fails, not skips, when the bytes are not Darknet's)."""
    folder = VENDORED / "conformance" / case
    sha256 = json.loads((folder / "meta.json").read_text())["weights"]["sha256"]
    with np.load(folder / "weights_init.npz") as part:
        data = rebuild_weights(folder / "net.cfg", dict(part), sha256)
    path = Path(_REBUILT.name) / f"{case}.weights"
    path.write_bytes(data)
    return path


@pytest.fixture
def shared():
    return data_path


@pytest.fixture(scope="session")
def yolov3_tiny() -> tuple[Path, Path]:
    """(cfg, weights) of the real COCO yolov3-tiny."""
    return (data_path("darknet-cfg", "yolov3-tiny.cfg"),
            data_path("models", "yolov3-tiny.weights"))
