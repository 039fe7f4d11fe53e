"""The exported ONNX graph in onnxruntime against OpenCV DNN and our fast mode, side by side.

    python benchmarks/bench_onnx.py                   # yolov3-tiny (COCO) and yolov3 (random)
    python benchmarks/bench_onnx.py --repeat 20 --no-yolov3

Batch 1 at 416×416, the same thread count for all three (``--threads``, default 2):
onnxruntime's CPU provider on the graph ``netsurgery export`` writes (default options, all
graph optimisations), OpenCV with DNN_BACKEND_OPENCV / DNN_TARGET_CPU, and
``load_model(..., inference=True)``. Candidates run in turn; rows are ratios of medians (and
of the best times) to onnxruntime. The outputs are compared first (max relative error).
"""
from __future__ import annotations

import argparse
import os

import common
import numpy as np
import torch

from netsurgery.darknet.model import load_model
from netsurgery.export import build_onnx, export_heads


def candidates(cfg, weights, x: torch.Tensor, threads: int) -> tuple[dict, float]:
    import onnxruntime as ort

    fast = load_model(cfg, weights, inference=True)
    exported = build_onnx(fast, export_heads(fast, base_name="net"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(exported.data, options, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    net = common.opencv_net(cfg, weights)
    with torch.inference_mode():
        want = fast(x)
    got = session.run(None, feed)
    error = max(float(np.abs(g - w.numpy()).max() / max(1.0, float(w.abs().max())))
                for g, w in zip(got, want))
    return {"onnxruntime": lambda: session.run(None, feed),
            "OpenCV DNN": common.opencv_runner(net, x.numpy()),
            "netsurgery fast": lambda: fast(x)}, error


def bench(label: str, cfg, weights, repeat: int, threads: int) -> None:
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cands, error = candidates(cfg, weights, x, threads)
        with common.OtherLoad() as other:
            times = common.interleaved(cands, repeat)
    print(f"{label}: {cfg.name} + {weights.name}, {repeat} runs each; onnxruntime vs our "
          f"model: max relative difference {error:.1e}")
    for t in times.values():
        print(f"  {t.name:<20} {t.ms()}")
    ort_time = times["onnxruntime"]
    for name in ("OpenCV DNN", "netsurgery fast"):
        print("  " + common.ratio_line(f"{label} at 416, batch 1: {name} / onnxruntime",
                                       times[name], ort_time, "(none: a comparison)"))
    print("  " + other.line())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=0,
                        help="runs per candidate (default 30 for yolov3-tiny, 10 for yolov3)")
    parser.add_argument("--threads", type=int, default=common.THREADS)
    parser.add_argument("--no-yolov3", action="store_true", help="only yolov3-tiny")
    args = parser.parse_args()
    common.set_threads(args.threads)
    import onnxruntime

    for line in common.environment():
        print(line)
    print(f"onnxruntime {onnxruntime.__version__}, CPUExecutionProvider")
    bench("yolov3-tiny", *common.yolov3_tiny_files(), args.repeat or 30, args.threads)
    if not args.no_yolov3:
        bench("yolov3", *common.yolov3_files(), args.repeat or 10, args.threads)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
