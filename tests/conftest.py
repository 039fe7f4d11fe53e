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
from netsurgery.fetch import cache_dir, fetch_model, offline

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
def _fetch(name: str) -> Path | None:
    """The verified weights file of ``name`` in the user cache (fetched once), or None."""
    try:
        return fetch_model(name, cache_dir()).weights
    except NetsurgeryError:
        return None


def fetched_weights(name: str) -> Path:
    """``name``'s official weights through ``netsurgery.fetch`` (cached), or skip saying why."""
    got = _fetch(name)
    if got is None:
        why = "NETSURGERY_OFFLINE is set" if offline() else "download failed"
        pytest.skip(f"no real {name} weights: not in ../shared/models nor in {cache_dir()}, "
                    f"{why} (`python -m netsurgery fetch --dir {cache_dir()}` puts them there)")
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


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """After -ra's per-test lines: the skips counted by reason, one line each."""
    yield
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("skips by reason")
        for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{count:4d}  {reason}")
