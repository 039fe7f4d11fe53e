"""How well suggest-k predicts measured sweeps (docs/suggest-k.md): per task, the table of k,
measured mAP (mean ± half the spread of the seeds), predicted mAP and savings; Spearman's rank
correlation of each suggest-k run with the seeds' mean; the recommended k and its measured
loss; the times.

    python benchmarks/suggest_k_validation.py --task shapes PRED_S0.json [PRED_S1.json ...] \
        SWEEP_DIR [SWEEP_DIR ...] [--task text ...] [--tolerance 2]

Each PRED.json is written by ``suggest-k --json``; each SWEEP_DIR holds ``sweep.json`` and
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
    recommend,
    recommend_under_uncertainty,
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
            point = point.get("point", point)  # netsurgery-sweep-result/2 wraps it
            out.setdefault(int(point["k"]), []).append(float(point["map"]))
    return out


def report(name: str, preds: list[str], sweeps: list[str], tolerance: float) -> None:
    measured = finished_points(sweeps)
    mean = {k: sum(v) / len(v) for k, v in measured.items()}
    runs = [json.loads(Path(p).read_text()) for p in preds]
    ks = [c["k"] for c in runs[0]["candidates"] if c["k"] in measured]
    best_k = max(ks, key=lambda k: mean[k])
    print(f"\n### {name}\n")
    head = " | ".join(f"predicted, seed {i} (%)" for i in range(len(runs)))
    print(f"| k | measured mAP@0.5 (%) | {head} | speed loss | params shared | FLOPs shared |")
    print("|---" * (5 + len(runs)) + "|")
    for k in ks:
        m = [v * 100 for v in measured[k]]
        cells = []
        for run in runs:
            c = next(c for c in run["candidates"] if c["k"] == k)
            cells.append(f"{c['predicted_map'] * 100:.1f} ± {c['map_sigma'] * 100:.1f} "
                         f"(short run {c['observed_map'] * 100:.1f})")
        c0 = next(c for c in runs[0]["candidates"] if c["k"] == k)
        speeds = ", ".join(f"{next(c for c in r['candidates'] if c['k'] == k)['speed_loss']:.2f}"
                           for r in runs)
        print(f"| {k} | {sum(m) / len(m):.1f} ± {(max(m) - min(m)) / 2:.1f} "
              f"({', '.join(f'{v:.1f}' for v in m)}) | {' | '.join(cells)} | {speeds} "
              f"| {c0['params_fraction'] * 100:.1f} % | {c0['bflops_fraction'] * 100:.1f} % |")
    spreads = [(max(measured[k]) - min(measured[k])) * 100 for k in ks]
    gaps = sorted(mean[k] * 100 for k in ks)
    print(f"\nSeed spread of the sweep: mean {sum(spreads) / len(spreads):.1f}, max "
          f"{max(spreads):.1f} points; range of the candidates' means {gaps[-1] - gaps[0]:.1f} "
          f"points; best measured k = {best_k} ({mean[best_k] * 100:.1f} %)")
    walls = [sweep_seconds(Path(s)) for s in sweeps]
    for i, run in enumerate(runs):
        predicted = {c["k"]: c["predicted_map"] for c in run["candidates"] if c["k"] in mean}
        rho = spearman([predicted[k] for k in ks], [mean[k] for k in ks])
        sigma = {c["k"]: c["map_sigma"] for c in run["candidates"] if c["k"] in mean}
        chosen, chance = recommend_under_uncertainty(predicted, sigma, tolerance)
        plain = recommend(predicted, tolerance)
        print(f"- suggest-k run {i}: Spearman **{rho:.2f}**; recommended k = {chosen} "
              f"(probability {chance:.2f} within tolerance {tolerance:g}), measured loss "
              f"**{(mean[best_k] - mean[chosen]) * 100:.1f} points**; the plain rule (largest k "
              f"within tolerance of the best prediction) gives k = {plain}, loss "
              f"{(mean[best_k] - mean[plain]) * 100:.1f} points; {run['seconds']:.0f} s (trunk "
              f"features {run['feature_seconds']:.0f} s) = "
              f"{run['seconds'] / walls[min(i, len(walls) - 1)]:.2f} of the sweep of the same seed")
    trains = [train_seconds(Path(s)) for s in sweeps]
    print(f"- sweep wall time per seed: {', '.join(f'{w:.0f} s' for w in walls)} (training "
          f"alone {', '.join(f'{t:.0f} s' for t in trains)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", nargs="+", action="append", required=True,
                        metavar="NAME PRED.json... SWEEP_DIR...", help="repeat per task")
    parser.add_argument("--tolerance", type=float, default=2.0)
    args = parser.parse_args()
    for name, *files in args.task:
        preds = [f for f in files if f.endswith(".json")]
        sweeps = [f for f in files if not f.endswith(".json")]
        report(name, preds, sweeps, args.tolerance)


if __name__ == "__main__":
    main()
