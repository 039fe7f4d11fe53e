"""Shared helpers for the benchmark scripts (run by hand, never collected by pytest).

Every figure is a ratio of two timings taken side by side in one process: the candidates run
in turn (A, B, A, B, …) so that a busy machine slows both alike, and each is summarised by the
median over the repetitions. Random yolov3 weights (seeded) and the merged networks are
written once into a cache folder (``$NETSURGERY_BENCH_CACHE``, default
``$TMPDIR/netsurgery-bench``) and reused by later runs.
"""
from __future__ import annotations

import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from netsurgery.darknet.cfg import load_cfg  # noqa: E402
from netsurgery.darknet.network import build_network  # noqa: E402
from netsurgery.darknet.weights import WeightsHeader, save_weights  # noqa: E402
from netsurgery.darknet.weights import random_arrays as _random_arrays  # noqa: E402

THREADS = 2
SEED = 1234


def cache_dir() -> Path:
    folder = Path(os.environ.get("NETSURGERY_BENCH_CACHE",
                                 Path(tempfile.gettempdir()) / "netsurgery-bench"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        sys.exit(f"{path} not found: the benchmarks need ../shared beside the project")
    return path


def set_threads(n: int = THREADS) -> None:
    """The same thread count for torch and OpenCV."""
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def environment() -> list[str]:
    """Lines describing the machine and library versions, printed before the results."""
    import cv2
    import torch

    try:
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [f"python {platform.python_version()}, torch {torch.__version__}, OpenCV "
            f"{cv2.__version__}, numpy {np.__version__}",
            f"CPU: {cpu}, {os.cpu_count()} logical cores; threads: torch "
            f"{torch.get_num_threads()}, OpenCV {cv2.getNumThreads()}; load average {load}"]


class OtherLoad:
    """How much CPU other processes used while a block ran (Linux): busy time of all CPUs
    from /proc/stat minus this process's own (and its waited-for children's). Benchmarks
    print it beside their results; above a few percent the torch medians are not
    trustworthy (see README)."""

    def __enter__(self) -> "OtherLoad":
        self._start = (self._busy(), self._own(), time.perf_counter())
        self.fraction: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        busy, own, wall = self._busy(), self._own(), time.perf_counter()
        if busy is None or self._start[0] is None:
            return
        ticks = os.sysconf("SC_CLK_TCK")
        others = (busy - self._start[0]) / ticks - (own - self._start[1])
        self.fraction = max(0.0, others / ((wall - self._start[2]) * (os.cpu_count() or 1)))

    @staticmethod
    def _busy() -> int | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(fields) - fields[3] - fields[4]  # all but idle and iowait

    @staticmethod
    def _own() -> float:
        import resource

        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def line(self) -> str:
        if self.fraction is None:
            return "other processes' CPU use during the run: unknown"
        warn = "  << busy machine: rerun when idle" if self.fraction > 0.05 else ""
        return f"other processes used {100 * self.fraction:.1f} % of the CPUs during the run{warn}"


@dataclass
class Timing:
    """Repeated wall-clock times of one candidate, in seconds."""

    name: str
    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    def ms(self) -> str:
        return f"{self.median * 1e3:8.1f} ms (min {self.best * 1e3:.1f})"


def interleaved(candidates: dict[str, Callable[[], object]], repeat: int,
                warmup: int = 2) -> dict[str, Timing]:
    """Time each candidate ``repeat`` times, alternating between them."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(name, t) for name, t in times.items()}


def ratio_line(label: str, num: Timing, den: Timing, target: str) -> str:
    """One table row: median ratio (and the ratio of the best times, less noisy when the
    machine is busy)."""
    return (f"{label:<58} {num.median / den.median:6.3f}   (best-of {num.best / den.best:.3f}) "
            f"target {target}")


# -- yolov3 with random weights ---------------------------------------------------------------
def cfg_at_size(src: Path, size: int, dest: Path) -> Path:
    """``src`` with [net] width/height = ``size`` (OpenCV reads the size from the cfg)."""
    cfg = load_cfg(src)
    cfg.net.set("width", str(size))
    cfg.net.set("height", str(size))
    if not dest.exists() or dest.read_text() != cfg.to_text():
        cfg.save(dest)
    return dest


def random_arrays(network, seed: int = SEED) -> dict[int, dict[str, np.ndarray]]:
    """Seeded plausible weights for ``network`` (netsurgery.darknet.weights.random_arrays)."""
    return _random_arrays(network.layers, seed)


def yolov3_files(size: int = 416) -> tuple[Path, Path]:
    """(cfg, weights) of yolov3 at ``size`` with seeded random weights, cached."""
    folder = cache_dir()
    cfg = cfg_at_size(shared("darknet-cfg", "yolov3.cfg"), size, folder / f"yolov3-{size}.cfg")
    key = hashlib.sha256(f"{SEED}:{cfg.read_text()}".encode()).hexdigest()[:12]
    weights = folder / f"yolov3-random-{key}.weights"
    if not weights.exists():
        print(f"writing random yolov3 weights to {weights} (once) ...", file=sys.stderr)
        network = build_network(cfg)
        save_weights(weights, WeightsHeader(0, 2, 5, 0), network.layers, random_arrays(network))
    return cfg, weights


def yolov3_tiny_files(size: int = 416) -> tuple[Path, Path]:
    """The real COCO yolov3-tiny (cfg at ``size``)."""
    cfg = cfg_at_size(shared("darknet-cfg", "yolov3-tiny.cfg"), size,
                      cache_dir() / f"yolov3-tiny-{size}.cfg")
    return cfg, shared("models", "yolov3-tiny.weights")


def opencv_net(cfg: Path, weights: Path):
    """OpenCV's Darknet importer, plain OpenCV backend on the CPU."""
    import cv2

    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


def opencv_runner(net, x: np.ndarray) -> Callable[[], object]:
    names = net.getUnconnectedOutLayersNames()

    def run():
        net.setInput(x)
        return net.forward(names)

    return run
