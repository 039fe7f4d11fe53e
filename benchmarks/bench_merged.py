"""Merged networks at FLOP-theory speed: yolov3 base + 1 and + 3 tasks sharing layers 0..73.

    python benchmarks/bench_merged.py [--repeat 7] [--k 73]

Tasks are the base (random yolov3 weights, seeded) with the tail k+1.. perturbed, as after
retraining with a frozen trunk; the merged cfg/weights/heads are written once into the
benchmark cache. Timed in turn: ``MergedModel(x)`` (every head) and the base and task models
loaded and run separately (fast inference mode, batch 1, 416×416, 2 threads). Row: time
merged / (time base + times tasks), medians, beside the FLOP ratio of the cost accounting
(``merge_savings``); the target is to be within 5 % of it.
"""
from __future__ import annotations

import argparse

import common
import numpy as np
import torch

from netsurgery.analysis.cost import merge_savings
from netsurgery.darknet.model import load_model
from netsurgery.surgery.heads import load_heads
from netsurgery.surgery.merge import TaskInput, merge
from netsurgery.surgery.multihead import MergedModel
from netsurgery.surgery.weighted import load_weighted


def task_graph(base, k: int, seed: int):
    """``base`` with every array after layer k scaled by (1 + 5 % noise)."""
    rng = np.random.default_rng(seed)
    task = base.copy()
    for index in sorted(i for i in task.arrays if i > k):
        task.arrays[index] = {name: (a * (1 + 0.05 * rng.standard_normal(a.shape, np.float32)))
                              .astype(np.float32) for name, a in task.arrays[index].items()}
    return task


def build(k: int, n_tasks: int):
    """(merged cfg, weights, heads json, [(task cfg, weights)]) in the cache, made once."""
    cfg, weights = common.yolov3_files()
    folder = common.cache_dir()
    stem = f"{weights.stem}-k{k}"
    tasks = [(folder / f"{stem}-task{i}.cfg", folder / f"{stem}-task{i}.weights")
             for i in range(n_tasks)]
    out = folder / f"{stem}-merged{n_tasks}"
    paths = (out.with_suffix(".cfg"), out.with_suffix(".weights"),
             out.with_suffix(".heads.json"))
    if all(p.exists() for p in paths) and all(w.exists() for _, w in tasks):
        return (*paths, tasks)
    print(f"writing {n_tasks} task(s) and the merged network to {folder} (once) ...")
    base = load_weighted(cfg, weights)
    graphs = []
    for i, (tcfg, tweights) in enumerate(tasks):
        graph = task_graph(base, k, seed=100 + i)
        if not tweights.exists():
            graph.save(tcfg, tweights)
        graphs.append(graph)
    merged, heads = merge(base, [TaskInput(f"task{i}", g, k) for i, g in enumerate(graphs)])
    merged.save(paths[0], paths[1])
    heads.save(paths[2])
    return (*paths, tasks)


def bench(k: int, n_tasks: int, repeat: int) -> None:
    base_cfg, base_weights = common.yolov3_files()
    mcfg, mweights, mheads, tasks = build(k, n_tasks)
    heads = load_heads(mheads)
    merged = MergedModel(load_model(mcfg, mweights, inference=True), heads)
    separate = [load_model(base_cfg, base_weights, inference=True)] + \
        [load_model(c, w, inference=True) for c, w in tasks]
    flop_ratio = merge_savings(merged.model.network, heads).bflops_ratio
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(0))

    def run_separate():
        return [model(x) for model in separate]

    with torch.inference_mode(), common.OtherLoad() as other:
        times = common.interleaved({"merged": lambda: merged(x), "separate": run_separate},
                                   repeat, warmup=1)
    m, s = times["merged"], times["separate"]
    measured = m.median / s.median
    print(f"base + {n_tasks} task(s) at k={k}: {len(merged.model.layers)} merged layers, "
          f"{repeat} runs each")
    print(f"  merged (all heads)          {m.ms()}")
    print(f"  separate (base + tasks)     {s.ms()}")
    print(f"  {'merged yolov3 + ' + str(n_tasks) + f' task(s) at k={k}: time merged / separate':<58}"
          f" {measured:6.3f}   (best-of {m.best / s.best:.3f})")
    print(f"  {'FLOP ratio from cost accounting':<58} {flop_ratio:6.3f}   measured / FLOP "
          f"ratio = {measured / flop_ratio:.3f} (target within 5 %)")
    print("  " + other.line())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--k", type=int, default=73)
    parser.add_argument("--threads", type=int, default=common.THREADS)
    args = parser.parse_args()
    common.set_threads(args.threads)
    for line in common.environment():
        print(line)
    for n in (1, 3):
        bench(args.k, n, args.repeat)


if __name__ == "__main__":
    main()
