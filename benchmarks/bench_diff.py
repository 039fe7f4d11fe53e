"""Benchmark ``diff_weights`` against plain reading of the two files (run by hand):

    python benchmarks/bench_diff.py [--repeats 5] [--perturb-from 75] [--all-changed]

Writes two random yolov3-size .weights files (yolov3.cfg from ../shared/darknet-cfg, seeded
numpy generator, ``save_weights``) into a temporary folder: the task is the base with the
layers from ``--perturb-from`` on perturbed (``--all-changed``: every layer), as after
retraining the tail with a frozen trunk. Prints median times of reading both files with
``np.fromfile`` and of ``diff_weights`` (default 1 thread, and 2 threads), their ratio (target
≤ 2.0), the thread count, the numpy version and the load average. Files are read once before
timing so every measurement starts from the page cache; the measurements are interleaved so
that other load on the machine affects them alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from netsurgery.analysis.diff import diff_weights  # noqa: E402
from netsurgery.darknet.network import build_network  # noqa: E402
from netsurgery.darknet.weights import WeightsHeader, file_layout, save_weights  # noqa: E402

CFG = ROOT.parent / "shared" / "darknet-cfg" / "yolov3.cfg"


def make_files(folder: Path, perturb_from: int, seed: int = 0) -> tuple[Path, Path, int]:
    network = build_network(CFG)
    rng = np.random.default_rng(seed)
    base: dict[int, dict[str, np.ndarray]] = {}
    task: dict[int, dict[str, np.ndarray]] = {}
    for spec, arrays in file_layout(network.layers):
        base[spec.index] = {}
        task[spec.index] = {}
        for arr in arrays:
            values = rng.standard_normal(arr.count, dtype=np.float32).reshape(arr.shape)
            if arr.name == "weights":
                values *= 0.02
            elif arr.name == "rolling_variance":
                values = np.abs(values) + 0.1
            base[spec.index][arr.name] = values
            if spec.index >= perturb_from:
                noise = rng.standard_normal(arr.count, dtype=np.float32).reshape(arr.shape)
                task[spec.index][arr.name] = values + 0.1 * np.abs(values) * noise
            else:
                task[spec.index][arr.name] = values
    header = WeightsHeader(0, 2, 5, 32013312)
    base_path, task_path = folder / "base.weights", folder / "task.weights"
    save_weights(base_path, header, network.layers, base)
    save_weights(task_path, header, network.layers, task)
    return base_path, task_path, network.params


def interleaved_medians(fns, repeats: int) -> list[float]:
    """Median time of each function, measured in turn within every repeat so that changes
    in machine load affect all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def threads() -> str:
    parts = [f"os.cpu_count()={os.cpu_count()}"]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if var in os.environ:
            parts.append(f"{var}={os.environ[var]}")
    try:
        from threadpoolctl import threadpool_info

        parts += [f"{i['internal_api']}={i['num_threads']}" for i in threadpool_info()]
    except ImportError:
        pass
    return ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--perturb-from", type=int, default=75)
    parser.add_argument("--all-changed", action="store_true")
    args = parser.parse_args()
    if not CFG.exists():
        print(f"{CFG} not found: run beside the ../shared folder", file=sys.stderr)
        return 2
    perturb_from = 0 if args.all_changed else args.perturb_from
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        base, task, params = make_files(Path(tmp), perturb_from)
        print(f"wrote 2 x {base.stat().st_size / 1e6:.1f} MB ({params:,} params, task perturbed "
              f"from layer {perturb_from}) in {time.perf_counter() - t0:.1f} s")

        def read_both():
            np.fromfile(base, dtype=np.uint8)
            np.fromfile(task, dtype=np.uint8)

        def run_diff():
            return diff_weights(CFG, base, CFG, task)

        def run_diff_2():
            return diff_weights(CFG, base, CFG, task, workers=2)

        read_both()  # warm the page cache
        report = run_diff()
        t_read, t_diff, t_diff2 = interleaved_medians([read_both, run_diff, run_diff_2],
                                                      args.repeats)
    s = report.summary
    print(f"diff: {s.compared} layers compared, first changed {s.first_changed}, identical "
          f"prefix 0..{s.identical_prefix}")
    print(f"read both files (np.fromfile):    {t_read * 1e3:5.1f} ms  (medians of "
          f"{args.repeats})")
    print(f"diff_weights (default, 1 thread): {t_diff * 1e3:5.1f} ms")
    print(f"diff_weights (workers=2):         {t_diff2 * 1e3:5.1f} ms")
    print(f"ratio diff/read: {t_diff / t_read:.2f} (target <= 2.0); "
          f"workers=2: {t_diff2 / t_read:.2f}")
    print(f"threads: {threads()}; numpy {np.__version__}; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
