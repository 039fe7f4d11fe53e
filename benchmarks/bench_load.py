"""Loading speed and peak memory for a yolov3-size .weights file (≈248 MB, random, seeded).

    python benchmarks/bench_load.py [--repeat 7]

Every measurement runs in a fresh interpreter (``python bench_load.py --child MODE``), so
that peak RSS (``ru_maxrss``) belongs to that one load. Modes, run in turn:

- ``fromfile``: ``numpy.fromfile`` of the file (the disk-speed reference),
- ``load``: ``load_model(cfg, weights)`` (parse the cfg, build the model, read the weights),
- ``inference``: ``load_model(cfg, weights, inference=True)`` (plus BatchNorm folding and
  packing the kernels for the fast path),
- ``opencv``: ``cv2.dnn.readNetFromDarknet(cfg, weights)``, for context (OpenCV fuses and
  packs at its first forward, not here).

The file is read once before timing, so every mode starts from the page cache. Rows: time
ratio against ``fromfile`` (medians) and peak RSS over the file size — both the process's
whole peak and the part above the interpreter's own (torch and numpy imported, ~220 MB).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("fromfile", "load", "inference", "opencv")


def _resident() -> int:
    """Current resident memory (Linux), else the peak so far."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(mode: str, cfg: str, weights: str) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from netsurgery.darknet.layers.fastconv import pack_conv
    from netsurgery.darknet.model import load_model

    torch.set_num_threads(2)
    if mode == "opencv":  # imported before the baseline, and only here: see docs
        import cv2

        cv2.setNumThreads(2)
    # first use of oneDNN and of the thread pool set up their own state: not part of loading
    pack_conv(torch.randn(16, 8, 3, 3), torch.zeros(16), (1, 1), 1, 1, 1, "leaky",
              (8, 8, 8))(torch.randn(1, 8, 8, 8))
    F.max_pool2d(torch.randn(1, 8, 8, 8), 2)
    base = _resident()
    start = time.perf_counter()
    if mode == "fromfile":
        kept = np.fromfile(weights, dtype=np.uint8)
    elif mode == "opencv":
        kept = cv2.dnn.readNetFromDarknet(cfg, weights)
    else:
        kept = load_model(cfg, weights, inference=mode == "inference")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del kept
    print(json.dumps({"seconds": seconds, "base": base, "peak": peak}))


def measure(mode: str, cfg: Path, weights: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(cfg), str(weights)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "CFG", "WEIGHTS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    import common

    common.set_threads()
    for line in common.environment():
        print(line)
    cfg, weights = common.yolov3_files()
    size = weights.stat().st_size
    with open(weights, "rb") as handle:  # into the page cache
        while handle.read(1 << 24):
            pass
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with common.OtherLoad() as other:
        for _ in range(args.repeat):
            for mode in MODES:
                runs[mode].append(measure(mode, cfg, weights))
    print(f"{weights.name}: {size / 2**20:.1f} MiB, {args.repeat} fresh processes per mode")
    med = {m: statistics.median(r["seconds"] for r in runs[m]) for m in MODES}
    best = {m: min(r["seconds"] for r in runs[m]) for m in MODES}
    for mode in MODES:
        peak = max(r["peak"] for r in runs[mode])
        above = max(r["peak"] - r["base"] for r in runs[mode])
        print(f"  {mode:<10} {med[mode] * 1e3:8.1f} ms (min {best[mode] * 1e3:.1f})   peak RSS "
              f"{peak / 2**20:6.0f} MiB = {peak / size:.2f}× file, above interpreter "
              f"{above / 2**20:4.0f} MiB = {above / size:.2f}× file")
    for mode, what, target in (("load", "load_model(cfg, weights)", "target ≤ 1.5"),
                               ("inference", "load_model(..., inference=True)", "(context)"),
                               ("opencv", "cv2.dnn.readNetFromDarknet", "(context)")):
        print(f"  {what + ' / numpy.fromfile':<58} {med[mode] / med['fromfile']:6.3f}   "
              f"(best-of {best[mode] / best['fromfile']:.3f}) {target}")
    print("  " + other.line())
    for mode in ("load", "inference"):
        peak = max(r["peak"] for r in runs[mode])
        above = max(r["peak"] - r["base"] for r in runs[mode])
        print(f"  {'peak RSS loading yolov3 (' + mode + ') / file size':<58} {peak / size:6.3f}   "
              f"(above interpreter {above / size:.3f}) target ≤ 2.5")


if __name__ == "__main__":
    main()
