"""A merged network built in memory against the files route it replaced (sweep and demo).

    python benchmarks/bench_merge_memory.py [--repeat 5]

Base yolov3-tiny (real COCO weights) + one task (the same network) merged at k=8. Candidates,
interleaved: ``merged.model()`` (the arrays handed to the model without a file) and
``merged.save(...)`` + ``load_model(...)`` from a temporary folder (what sweep and the demo
did before). Both end in the fast inference mode; their outputs are checked bit-identical.
Target: the in-memory route is not slower (ratio ≤ 1).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common
import torch

from netsurgery.darknet.model import load_model
from netsurgery.surgery.merge import TaskInput, merge
from netsurgery.surgery.weighted import load_weighted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    common.set_threads()
    cfg, weights = common.yolov3_tiny_files()
    merged, _ = merge(load_weighted(cfg, weights), [TaskInput("t", load_weighted(cfg, weights), 8)])
    folder = Path(tempfile.mkdtemp())

    def via_files():
        merged.save(folder / "m.cfg", folder / "m.weights")
        return load_model(folder / "m.cfg", folder / "m.weights", inference=True)

    x = torch.rand(1, 3, 416, 416)
    with torch.inference_mode():
        same = all(torch.equal(a, b) for a, b in zip(merged.model()(x), via_files()(x)))
    with common.OtherLoad() as load:
        t = common.interleaved({"memory": merged.model, "files": via_files}, args.repeat, 1)
    print("\n".join(common.environment()))
    print(f"in memory: {t['memory'].ms()}   via files: {t['files'].ms()}   outputs "
          f"{'bit-identical' if same else 'DIFFERENT'}")
    print(common.ratio_line("merged model in memory / save + load_model", t["memory"],
                            t["files"], "≤ 1"))
    print(load.line())


if __name__ == "__main__":
    main()
