"""suggest-k's wall time against the sweep it stands in for, side by side in one run.

The task is the validation's (docs/suggest-k.md): the real COCO yolov3-tiny at 128×128
(batch 16, learning rate 0.005, burn_in 20, 300 iterations, steps 240,270) on the synthetic
shapes task (800 images at 160×160, half for validation), candidates 4,6,8,10,12,13, one
torch thread, no augmentation. The rounds alternate: suggest-k (``--dtype auto``), suggest-k
in float32, the sweep (``--no-end-to-end --timing-repeats 3``), and again. The dataset and the
cfgs are written once into ``$NETSURGERY_BENCH_CACHE/suggest-k``; each sweep writes into a
fresh temporary folder. One round takes about 10 minutes on two cores.

    python benchmarks/bench_suggest_k.py [--repeat N] [--task shapes|text] [--seed S]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import OtherLoad, Timing, cache_dir, environment, shared

from netsurgery.analysis.suggest import suggest_k
from netsurgery.analysis.sweep import run_sweep
from netsurgery.analysis.tails import resolve_dtype
from netsurgery.darknet.cfg import load_cfg
from netsurgery.training.anchors import task_cfg_for_dataset
from netsurgery.training.synth import make_shapes_dataset, make_text_dataset

CANDIDATES = (4, 6, 8, 10, 12, 13)
ITERATIONS = 300
SCHEDULE = {"width": 128, "height": 128, "batch": 16, "subdivisions": 1,
            "learning_rate": 0.005, "burn_in": 20, "max_batches": ITERATIONS,
            "steps": "240,270"}


def task_files(kind: str) -> tuple[Path, Path, Path, Path]:
    """(base cfg, base weights, task cfg, .data), written once."""
    folder = cache_dir() / "suggest-k"
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "base128.cfg"
    if not base.exists():
        cfg = load_cfg(shared("darknet-cfg", "yolov3-tiny.cfg"))
        for key, value in SCHEDULE.items():
            cfg.net.set(key, str(value))
        cfg.save(base)
    data = folder / kind / f"{kind}.data"
    if not data.exists():
        print(f"writing the {kind} task (800 images) to {folder / kind} (once) ...", flush=True)
        make = make_shapes_dataset if kind == "shapes" else make_text_dataset
        make(folder / kind, 800, 1, (160, 160), valid_fraction=0.5)
    task = folder / kind / "task.cfg"
    if not task.exists():
        task_cfg_for_dataset(base, data)[0].save(task)
    return base, shared("models", "yolov3-tiny.weights"), task, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--task", choices=("shapes", "text"), default="shapes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base, weights, task, data = task_files(args.task)
    print("\n".join(environment()))
    auto = resolve_dtype("auto")
    times: dict[str, list[float]] = {f"suggest-k ({auto})": [], "suggest-k (float32)": [],
                                     "sweep": []}
    answers: dict[str, list[int]] = {name: [] for name in times}

    def suggest(dtype: str) -> tuple[float, int]:
        result = suggest_k(str(task), str(weights), str(data), str(base), CANDIDATES,
                           ITERATIONS, seed=args.seed, dtype=dtype)
        return result.seconds, result.recommended

    def sweep() -> tuple[float, int]:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            points = run_sweep(str(base), str(weights), str(task), str(data), CANDIDATES,
                               Path(out), ITERATIONS, end_to_end=False, timing_repeats=3,
                               augment=False, seed=args.seed)
            seconds = time.perf_counter() - start
        best = max((p for p in points if p.k >= 0), key=lambda p: p.map)
        return seconds, best.k

    runs = {f"suggest-k ({auto})": lambda: suggest(auto),
            "suggest-k (float32)": lambda: suggest("float32"), "sweep": sweep}
    if auto == "float32":  # no bfloat16 in hardware: the two suggest-k runs are one
        del runs["suggest-k (float32)"], times["suggest-k (float32)"]
    with OtherLoad() as load:
        for round_ in range(args.repeat):
            for name, fn in runs.items():
                seconds, k = fn()
                times[name].append(seconds)
                answers[name].append(k)
                print(f"round {round_ + 1}: {name:<22} {seconds:7.1f} s  (k = {k})", flush=True)
    timings = {name: Timing(name, t) for name, t in times.items()}
    sweep_t = timings["sweep"]
    print(f"\n{'':<24} {'median':>9} {'best':>9}  of the sweep (median, best-of)   target")
    for name, t in timings.items():
        print(f"{name:<24} {t.median:8.1f}s {t.best:8.1f}s  {t.median / sweep_t.median:6.3f}"
              f"  {t.best / sweep_t.best:6.3f}" + ("              <= 0.25"
                                                  if name != "sweep" else ""))
    print("recommended k (suggest-k) / best measured k (sweep): "
          + "; ".join(f"{name} {answers[name]}" for name in answers))
    print(load.line())


if __name__ == "__main__":
    main()
