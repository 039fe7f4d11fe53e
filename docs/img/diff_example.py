"""Writes docs/img/diff-example.png: yolov3-tiny against a stand-in "logo" task model whose
layers 0..8 are the base's and whose layers 10.. moved by additive noise of 5 % of each
layer's mean |weight| (a retrained tail; the two 255-filter head convolutions are new, 18
filters). Elements of the base near zero get huge relative changes, as in a real retraining.
The chart has all five panels (``diff --arrays weights,biases,scales,rolling_mean,
rolling_variance``).

    PYTHONPATH=. python docs/img/diff_example.py /work/shared/models/yolov3-tiny.weights /tmp/logo
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from netsurgery.analysis.diff import diff_many
from netsurgery.analysis.plots import plot_diff
from netsurgery.darknet.cfg import load_cfg
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import load_weights, random_arrays, save_weights
from netsurgery.surgery.editing import retarget_heads

ROOT = Path(__file__).resolve().parents[2]


def main(base_weights: str, work: str) -> None:
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    base_cfg = ROOT / "cfg" / "yolov3-tiny.cfg"
    task_cfg = work_dir / "logo.cfg"
    retarget_heads(load_cfg(base_cfg), 1).save(task_cfg)
    base = load_weights(base_weights, build_network(base_cfg).layers)
    task_layers = build_network(task_cfg).layers
    fresh = random_arrays(task_layers, seed=1)
    rng = np.random.default_rng(0)
    arrays = {}
    for spec in task_layers:
        if spec.index not in fresh:
            continue
        old = base.layers[spec.index].arrays
        if any(old[k].shape != v.shape for k, v in fresh[spec.index].items()):
            arrays[spec.index] = fresh[spec.index]  # a head conv of another class count
        elif spec.index < 10:
            arrays[spec.index] = {k: np.array(v) for k, v in old.items()}
        else:
            arrays[spec.index] = {
                k: (v + 0.05 * np.abs(v).mean() * rng.standard_normal(v.shape))
                .astype(np.float32) for k, v in old.items()}
    save_weights(work_dir / "logo.weights", base.header, task_layers, arrays)
    (report,) = diff_many(base_cfg, base_weights, [(task_cfg, work_dir / "logo.weights")])
    chart = plot_diff(report, ROOT / "docs" / "img" / "diff-example.png", marks=[8],
                      arrays=("weights", "biases", "scales", "rolling_mean",
                              "rolling_variance"))
    print(f"wrote {chart.path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
