"""Inference speed: netsurgery's fast mode against OpenCV DNN on the same cfg + weights.

    python benchmarks/bench_inference.py                 # yolov3-tiny (COCO) and yolov3 (random)
    python benchmarks/bench_inference.py --repeat 30 --no-yolov3
    python benchmarks/bench_inference.py --compile       # also torch.compile (slow to build)
    python benchmarks/bench_inference.py --profile       # torch.profiler table of the fast path

Batch 1 at 416×416, 2 threads for torch and OpenCV (``--threads``), OpenCV with
DNN_BACKEND_OPENCV / DNN_TARGET_CPU. Candidates run in turn; each row is the ratio of
medians (and of the best times). Also shown for context: the inference mode without the fast
path (``inference(fast=False)``: BatchNorm folded, NCHW, F.conv2d) and the exact model
(BatchNorm computed per call).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import common
from netsurgery.model import load_model


def candidates(cfg, weights, x: torch.Tensor, compile_too: bool) -> dict:
    fast = load_model(cfg, weights, inference=True)
    folded = load_model(cfg, weights, inference=True).inference(fast=False)
    exact = load_model(cfg, weights)
    net = common.opencv_net(cfg, weights)
    out = {"netsurgery fast": lambda: fast(x),
           "OpenCV DNN": common.opencv_runner(net, x.numpy()),
           "inference(fast=False)": lambda: folded(x),
           "exact (BN per call)": lambda: exact(x)}
    if compile_too:
        start = time.perf_counter()
        compiled = torch.compile(folded)  # packed oneDNN ops are opaque to dynamo: compile
        compiled(x)                       # the NCHW/F.conv2d path and let inductor fuse it
        print(f"  torch.compile: first call (compilation) {time.perf_counter() - start:.1f} s")
        out["torch.compile(fast=False)"] = lambda: compiled(x)
    return out


def bench(label: str, cfg, weights, repeat: int, compile_too: bool, target: str) -> None:
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cands = candidates(cfg, weights, x, compile_too)
        times = common.interleaved(cands, repeat)
    print(f"{label}: {cfg.name} + {weights.name}, {repeat} runs each")
    for t in times.values():
        print(f"  {t.name:<28} {t.ms()}")
    print("  " + common.ratio_line(f"{label} at 416, batch 1: netsurgery / OpenCV DNN",
                                   times["netsurgery fast"], times["OpenCV DNN"], target))


def profile(cfg, weights) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = load_model(cfg, weights, inference=True)
    x = torch.rand(1, 3, 416, 416)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                model(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=0,
                        help="runs per candidate (default 30 for yolov3-tiny, 10 for yolov3)")
    parser.add_argument("--threads", type=int, default=common.THREADS)
    parser.add_argument("--no-yolov3", action="store_true", help="only yolov3-tiny")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--profile", action="store_true", help="profile the fast path")
    args = parser.parse_args()
    common.set_threads(args.threads)
    for line in common.environment():
        print(line)
    tiny = common.yolov3_tiny_files()
    if args.profile:
        profile(*tiny)
        if not args.no_yolov3:
            profile(*common.yolov3_files())
        return
    bench("yolov3-tiny", *tiny, args.repeat or 30, args.compile, "≤ 1.0 (stretch ≤ 0.8)")
    if not args.no_yolov3:
        bench("yolov3", *common.yolov3_files(), args.repeat or 10, args.compile, "≤ 1.0")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
