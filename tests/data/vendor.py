"""Rebuild tests/data/ from ../shared (run by hand: ``python tests/data/vendor.py``).

Copies byte for byte what is small, and trims the two large conformance cases to the stored
layers that a clone without ../shared can check (see README.md here for what and why)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared"
sys.path.insert(0, str(HERE.parent))
from darknet_init import stored_part  # noqa: E402

WHOLE = ["conformance/README.md", "conformance/cov-det-96", "conformance/cov-cls-64",
         "darknet-cfg", "darknet-cfg-all", "images", "models/coco.names"]
# Large cases: no net.weights (yolov3-tiny's come from `fetch`; yolov4-tiny-160's are rebuilt
# from weights_init.npz) and only the layers named here (np.savez_compressed, float32 as stored).
TRIMMED = {"yolov3-tiny-coco": [12, 16, 23], "yolov4-tiny-160": [3, 11, *range(17, 38)]}
TRIMMED_FILES = ["net.cfg", "input.npy", "detections.txt"]
# Darknet's srand seeds of the random cases: (first layer drawn from it, seed). 12345 is the
# harness's; make_yolo_layer reseeds with time(0), found by search (darknet_init.py).
REBUILT = {"yolov4-tiny-160": [(0, 12345), (31, 1795497074)]}


def copy(rel: str) -> None:
    src, dst = SHARED / rel, HERE / rel
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    for path in [dst, *dst.rglob("*")]:  # ../shared is read-only; the copies are not
        path.chmod(0o755 if path.is_dir() else 0o644)


def trim(case: str, kept: list[int]) -> None:
    src, dst = SHARED / "conformance" / case, HERE / "conformance" / case
    for name in TRIMMED_FILES:
        if (src / name).exists():
            copy(f"conformance/{case}/{name}")
    layers = np.load(src / "layers.npz")
    keys = [f"layer_{i:03d}" for i in kept]
    with open(dst / "layers.npz", "wb") as out:
        np.savez_compressed(out, **{k: layers[k] for k in keys})
    meta = json.loads((src / "meta.json").read_text())
    if case in REBUILT:
        part = stored_part(src / "net.cfg", src / "net.weights", REBUILT[case])
        with open(dst / "weights_init.npz", "wb") as out:
            np.savez_compressed(out, **part)
    weights = ("rebuilt by tests/darknet_init.py from weights_init.npz" if case in REBUILT
               else "left out (netsurgery.fetch gets the same file)")
    meta["vendored_trim"] = (
        f"tests/data copy of ../shared/conformance/{case}: net.weights {weights}; "
        f"layers.npz reduced to {kept} (float32, unchanged values; no 'input' entry, it is "
        f"input.npy); dumped_layers_only lists what this copy holds. Darknet stored "
        f"{meta.get('dumped_layers_only', 'every layer')}.")
    meta["dumped_layers_only"] = kept
    (dst / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def main() -> None:
    for rel in WHOLE:
        copy(rel)
    for case, kept in TRIMMED.items():
        trim(case, kept)


if __name__ == "__main__":
    main()
