"""The k sweep (paper Fig. 5): for each share point k retrain the tail from k+1 with the trunk
frozen, evaluate it, and record what sharing up to k saves — so a user can pick k.

Resumable: each k writes ``OUT/k_<k>/result.json`` when it is complete, and a re-run skips
every k that has one. ``k = -1`` is the end-to-end reference (nothing frozen, nothing shared).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from netsurgery.darknet.network import build_network
from netsurgery.errors import UsageError
from netsurgery.fileio import atomic_write_bytes, atomic_write_text

from .cost import share_cost

END_TO_END = -1


@dataclass
class SweepPoint:
    """One k of the sweep."""

    k: int
    map: float
    map_present: float
    params_fraction: float  # of one detector's params in layers 0..k (0 for end-to-end)
    bflops_fraction: float
    params_saved_per_extra: int
    bflops_saved_per_extra: float
    time_merged_ms: float | None  # base + task merged at k, all heads
    time_separate_ms: float | None  # base alone + task alone
    iterations: int
    weights: str


def time_merged_vs_separate(base_cfg, base_weights, task_cfg, task_weights, k: int,
                            repeats: int = 5) -> tuple[float, float]:
    """Median inference time (ms, batch 1) of base + task merged at ``k`` against the two
    run separately (each head of the merged network alone: the same layers as its own
    network; see :mod:`netsurgery.detection.timing`). The merged network is built in
    memory."""
    from netsurgery.detection.timing import time_merged
    from netsurgery.surgery.merge import TaskInput, merge
    from netsurgery.surgery.weighted import load_weighted

    merged, heads = merge(load_weighted(base_cfg, base_weights),
                          [TaskInput("task", load_weighted(task_cfg, task_weights), k)])
    timing = time_merged(merged.model(inference=True), heads, repeats)
    return timing.merged.median_ms, timing.separate_ms


def run_sweep(base_cfg: str, base_weights: str, task_cfg: str, data: str, ks: Sequence[int],
              out_dir: str, iterations: int | None = None, end_to_end: bool = True,
              batch: int | None = None, timing_repeats: int = 5, augment: bool = True,
              seed: int = 0, log: Callable[[str], None] = lambda m: None) -> list[SweepPoint]:
    """Retrain, evaluate and measure for every k; skips k values already finished."""
    from netsurgery.darknet.model import load_model
    from netsurgery.detection.evaluate import evaluate_model
    from netsurgery.training.train import train

    base_net = build_network(base_cfg)
    n = len(base_net.layers)
    for k in ks:
        if not 0 <= k < n - 1:
            raise UsageError(f"k={k}: expected a layer index in 0..{n - 2} of {base_cfg}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points: list[SweepPoint] = []
    todo = list(ks) + ([END_TO_END] if end_to_end else [])
    for k in todo:
        folder = out / ("end_to_end" if k == END_TO_END else f"k_{k}")
        done = folder / "result.json"
        if done.exists():
            log(f"k={k}: finished before, skipped ({done})")
            points.append(SweepPoint(**json.loads(done.read_text())))
            continue
        log(f"k={k}: training layers {k + 1}.. ({'nothing frozen' if k < 0 else 'trunk frozen'})")
        resume = any(folder.glob("*_state.json"))  # interrupted run: continue it
        result = train(task_cfg, base_weights, data, freeze_until=k, iterations=iterations,
                       batch=batch, out_dir=str(folder), resume=resume, augment=augment,
                       seed=seed, base_cfg=base_cfg, log=log, validate=False,
                       overwrite=not resume)
        model = load_model(result.cfg_path, result.final_weights, inference=True)
        ev = evaluate_model(model, data)
        if k == END_TO_END:
            pf = bf = 0.0
            ps = 0
            bs = 0.0
            merged_ms = separate_ms = None
        else:
            share = share_cost(base_net, k)
            pf, bf = share.params_fraction, share.bflops_fraction
            ps, bs = share.params_shared, share.bflops_shared
            merged_ms, separate_ms = time_merged_vs_separate(
                base_cfg, base_weights, result.cfg_path, result.final_weights, k,
                timing_repeats)
        point = SweepPoint(k, ev.map, ev.map_present, pf, bf, ps, bs, merged_ms, separate_ms,
                           result.iterations, str(result.final_weights))
        atomic_write_text(done, json.dumps(asdict(point), indent=1) + "\n")
        log(f"k={k}: mAP@0.5 {ev.map * 100:.2f} %, shares {pf:.3f} params / {bf:.3f} FLOPs")
        points.append(point)
    write_outputs(points, out)
    return points


def write_outputs(points: Sequence[SweepPoint], out: Path) -> None:
    """``sweep.csv``, ``sweep.json`` and ``sweep.png`` in ``out``."""
    buf = io.StringIO()
    fields = list(asdict(points[0]).keys()) if points else []
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for p in points:
        writer.writerow(asdict(p))
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    atomic_write_text(out / "sweep.json",
                      json.dumps({"points": [asdict(p) for p in points]}, indent=1) + "\n")
    plot_sweep(points, out / "sweep.png")


def plot_sweep(points: Sequence[SweepPoint], path: Path) -> None:
    """mAP against k with the end-to-end result as reference line, savings on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shared = sorted((p for p in points if p.k >= 0), key=lambda p: p.k)
    e2e = [p for p in points if p.k == END_TO_END]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ks = [p.k for p in shared]
    ax.plot(ks, [p.map * 100 for p in shared], "o-", color="tab:blue", label="mAP@0.5, tail from k+1")
    if e2e:
        ax.axhline(e2e[0].map * 100, color="tab:blue", ls="--", lw=1,
                   label="end-to-end (nothing frozen)")
    ax.set_xlabel("share-until layer k (Darknet index)")
    ax.set_ylabel("mAP@0.5 (%)")
    ax2 = ax.twinx()
    ax2.plot(ks, [p.params_fraction * 100 for p in shared], "s:", color="tab:green",
             label="params saved per extra detector")
    ax2.plot(ks, [p.bflops_fraction * 100 for p in shared], "^:", color="tab:orange",
             label="FLOPs saved per extra detector")
    ax2.set_ylabel("saved per extra detector (%)")
    ax2.set_ylim(0, 100)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower left")
    ax.set_title("Accuracy against sharing")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def format_sweep(points: Sequence[SweepPoint]) -> str:
    lines = ["    k   mAP@0.5  params shared  FLOPs shared  merged ms  separate ms"]
    for p in sorted(points, key=lambda p: (p.k < 0, p.k)):
        name = "e2e" if p.k < 0 else str(p.k)
        t = (f"{p.time_merged_ms:9.1f}  {p.time_separate_ms:11.1f}"
             if p.time_merged_ms is not None else f"{'-':>9}  {'-':>11}")
        lines.append(f"{name:>5}  {p.map * 100:7.2f}%  {p.params_fraction:13.3f}  "
                     f"{p.bflops_fraction:12.3f}  {t}")
    return "\n".join(lines)
