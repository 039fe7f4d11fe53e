"""How well suggest-k predicts measured sweeps (docs/suggest-k.md): per task, the table of k,
measured mAP (mean ± half the spread of the seeds), predicted mAP and savings; Spearman's rank
correlation; the recommended k and its measured loss; the times.

    python benchmarks/suggest_k_validation.py --task shapes PRED.json SWEEP_DIR [SWEEP_DIR ...] \
        [--task text ...] [--budget 0.2] [--tolerance 2]

PRED.json is written by ``suggest-k --json`` (or ``suggest_k``); when its short runs are
longer than ``--budget`` asks, the curve is cut at ``budget × target`` iterations and the
prediction made again from that part (what suggest-k with that budget would have seen: its
runs are the same seeded runs, stopped earlier). Each SWEEP_DIR holds ``sweep.json`` and
``k_<k>/result.json`` per finished k and ``k_<k>/train_log.csv`` (whose last row's
``seconds`` is the training time of that k).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netsurgery.analysis.suggest import (  # noqa: E402
    checkpoints,
    extrapolate,
    recommend,
    spearman,
)


def sweep_seconds(folder: Path) -> float:
    """Wall time of a sweep: first k's cfg written to the last result.json written."""
    cfgs = [p.stat().st_mtime for p in folder.glob("k_*/*.cfg")]
    done = [p.stat().st_mtime for p in folder.glob("k_*/result.json")]
    return max(done) - min(cfgs) if cfgs and done else float("nan")


def train_seconds(folder: Path) -> float:
    total = 0.0
    for log in folder.glob("k_*/train_log.csv"):
        rows = list(csv.DictReader(log.open()))
        total += float(rows[-1]["seconds"]) if rows else 0.0
    return total


def finished_points(sweeps: list[str]) -> dict[int, list[float]]:
    """k -> measured mAPs of the finished k of each sweep folder (``k_<k>/result.json``: a
    sweep still running, or run as several processes, has no complete sweep.json yet)."""
    out: dict[int, list[float]] = {}
    for folder in sweeps:
        for done in sorted(Path(folder).glob("k_*/result.json")):
            point = json.loads(done.read_text())
            out.setdefault(int(point["k"]), []).append(float(point["map"]))
    return out


def predictions(pred: dict, budget: float | None) -> dict[int, tuple[float, float]]:
    target = pred["target_iterations"]
    out = {}
    for c in pred["candidates"]:
        curve = [tuple(p) for p in c["curve"]]
        if budget is not None:
            stop = max(1, round(target * budget))
            wanted = set(checkpoints(stop))
            cut = [p for p in curve if p[0] <= stop]
            same = [p for p in cut if p[0] in wanted]  # what suggest-k itself measures
            curve = same if len(same) >= 2 else cut
        out[c["k"]] = extrapolate(curve, target)
    return out


def report(name: str, pred_path: str, sweeps: list[str], budget: float | None,
           tolerance: float) -> None:
    pred = json.loads(Path(pred_path).read_text())
    measured = finished_points(sweeps)
    predicted = predictions(pred, budget)
    ks = [k for k in sorted(predicted) if k in measured]
    mean = {k: sum(measured[k]) / len(measured[k]) for k in ks}
    print(f"\n### {name}\n")
    print("| k | measured mAP@0.5 (%) | predicted mAP@0.5 (%) | params shared | FLOPs shared |")
    print("|---|---|---|---|---|")
    savings = {c["k"]: c for c in pred["candidates"]}
    for k in ks:
        m = [v * 100 for v in measured[k]]
        half = (max(m) - min(m)) / 2
        p, s = predicted[k]
        print(f"| {k} | {sum(m) / len(m):.1f} ± {half:.1f} ({', '.join(f'{v:.1f}' for v in m)})"
              f" | {p * 100:.1f} ± {s * 100:.1f} | {savings[k]['params_fraction'] * 100:.1f} % "
              f"| {savings[k]['bflops_fraction'] * 100:.1f} % |")
    rho = spearman([predicted[k][0] for k in ks], [mean[k] for k in ks])
    chosen = recommend({k: predicted[k][0] for k in ks}, tolerance)
    best_k = max(ks, key=lambda k: mean[k])
    loss = (mean[best_k] - mean[chosen]) * 100
    spreads = [(max(measured[k]) - min(measured[k])) * 100 for k in ks]
    gaps = sorted(mean[k] * 100 for k in ks)
    print(f"\nSpearman rank correlation (predicted vs measured mean): **{rho:.2f}**")
    print(f"Recommended k = {chosen} (tolerance {tolerance:g} points); best measured k = "
          f"{best_k} ({mean[best_k] * 100:.1f} %); measured loss at the recommendation "
          f"**{loss:.1f} points**")
    print(f"Seed spread: mean {sum(spreads) / len(spreads):.1f}, max {max(spreads):.1f} "
          f"points; range of the candidates' means {gaps[-1] - gaps[0]:.1f} points")
    if all(Path(s).exists() for s in sweeps):
        walls = [sweep_seconds(Path(s)) for s in sweeps]
        trains = [train_seconds(Path(s)) for s in sweeps]
        print(f"Sweep wall time per seed: {', '.join(f'{w:.0f} s' for w in walls)} "
              f"(training alone {', '.join(f'{t:.0f} s' for t in trains)}); "
              f"suggest-k run: {pred['seconds']:.0f} s (trunk features "
              f"{pred['feature_seconds']:.0f} s), ratio {pred['seconds'] / walls[0]:.2f} of "
              f"the first sweep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", nargs="+", action="append", required=True,
                        metavar="NAME PRED.json SWEEP_DIR", help="repeat per task")
    parser.add_argument("--budget", type=float, default=None,
                        help="cut the short runs to this fraction of the target")
    parser.add_argument("--tolerance", type=float, default=2.0)
    args = parser.parse_args()
    for name, pred, *sweeps in args.task:
        report(name, pred, sweeps, args.budget, args.tolerance)


if __name__ == "__main__":
    main()
