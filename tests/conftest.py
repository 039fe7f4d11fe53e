"""Shared test fixtures: the ../shared folder (Darknet conformance data, reference cfgs, real
yolov3-tiny weights, images). Tests needing it skip with a reason when it is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, or skip the test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared not found ({path}): run beside the shared data folder")
    return path


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture(scope="session")
def yolov3_tiny() -> tuple[Path, Path]:
    """(cfg, weights) of the real COCO yolov3-tiny."""
    return (shared_path("darknet-cfg", "yolov3-tiny.cfg"),
            shared_path("models", "yolov3-tiny.weights"))
