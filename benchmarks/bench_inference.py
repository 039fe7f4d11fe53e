"""Inference speed: netsurgery's fast mode against OpenCV DNN on the same cfg + weights.

    python benchmarks/bench_inference.py                 # yolov3-tiny (COCO) and yolov3 (random)
    python benchmarks/bench_inference.py --repeat 30 --no-yolov3
    python benchmarks/bench_inference.py --compile       # also torch.compile (slow to build)
    python benchmarks/bench_inference.py --profile       # torch.profiler table of the fast path
    python benchmarks/bench_inference.py --layers        # single conv / pool layers, 3 ways

Batch 1 at 416×416, 2 threads for torch and OpenCV (``--threads``), OpenCV with
DNN_BACKEND_OPENCV / DNN_TARGET_CPU. Candidates run in turn; each row is the ratio of
medians (and of the best times). ``--context`` adds the inference mode without the fast path
(``inference(fast=False)``: BatchNorm folded, NCHW, F.conv2d) and the exact model
(BatchNorm computed per call).
"""
from __future__ import annotations

import argparse
import os
import time

import common
import numpy as np
import torch

from netsurgery.darknet.model import load_model


def candidates(cfg, weights, x: torch.Tensor, context: bool, compile_too: bool) -> dict:
    fast = load_model(cfg, weights, inference=True)
    net = common.opencv_net(cfg, weights)
    out = {"netsurgery fast": lambda: fast(x),
           "OpenCV DNN": common.opencv_runner(net, x.numpy())}
    if context:
        folded = load_model(cfg, weights, inference=True).inference(fast=False)
        exact = load_model(cfg, weights)
        out["inference(fast=False)"] = lambda: folded(x)
        out["exact (BN per call)"] = lambda: exact(x)
    if compile_too:
        # the packed oneDNN kernels are opaque to dynamo: compile the NCHW F.conv2d path
        # (folded BatchNorm) and let inductor fuse and pack it itself
        plain = load_model(cfg, weights, inference=True).inference(fast=False)
        start = time.perf_counter()
        compiled = torch.compile(plain)
        compiled(x)
        print(f"  torch.compile: first call (compilation) {time.perf_counter() - start:.1f} s")
        out["torch.compile(fast=False)"] = lambda: compiled(x)
    return out


def bench(label: str, cfg, weights, repeat: int, context: bool, compile_too: bool,
          target: str) -> None:
    x = torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cands = candidates(cfg, weights, x, context, compile_too)
        with common.OtherLoad() as other:
            times = common.interleaved(cands, repeat)
    print(f"{label}: {cfg.name} + {weights.name}, {repeat} runs each")
    for t in times.values():
        print(f"  {t.name:<28} {t.ms()}")
    print("  " + common.ratio_line(f"{label} at 416, batch 1: netsurgery / OpenCV DNN",
                                   times["netsurgery fast"], times["OpenCV DNN"], target))
    print("  " + other.line())


def layers(repeat: int) -> None:
    """Single layers: F.conv2d (NCHW, then leaky), F.conv2d channels_last (leaky in place),
    packed kernel with leaky fused; and 2×2/2 max pooling NCHW vs channels_last."""
    import torch.nn.functional as F

    from netsurgery.darknet.layers.fastconv import pack_conv

    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for c, hw, n in ((3, 416, 16), (16, 208, 32), (128, 52, 256), (512, 13, 1024)):
            x = torch.randn(1, c, hw, hw, generator=g)
            w = torch.randn(n, c, 3, 3, generator=g) * 0.05
            b = torch.randn(n, generator=g)
            xc = x.contiguous(memory_format=torch.channels_last)
            wc = w.contiguous(memory_format=torch.channels_last)
            packed = pack_conv(w, b, (1, 1), 1, 1, 1, "leaky", (c, hw, hw))
            cands = {"F.conv2d NCHW": lambda: F.leaky_relu(F.conv2d(x, w, b, 1, 1), 0.1),
                     "F.conv2d channels_last": lambda: F.leaky_relu_(F.conv2d(xc, wc, b, 1, 1),
                                                                     0.1)}
            if packed is not None:
                cands["packed + fused leaky"] = lambda: packed(xc)
            times = common.interleaved(cands, repeat)
            print(f"  conv 3x3 {c}->{n} at {hw}x{hw}: " + ", ".join(
                f"{t.name} {t.median * 1e3:.2f} ms" for t in times.values()))
        for c, hw in ((16, 416), (64, 104)):
            x = torch.randn(1, c, hw, hw, generator=g)
            xc = x.contiguous(memory_format=torch.channels_last)
            times = common.interleaved({"NCHW": lambda: F.max_pool2d(x, 2, 2),
                                        "channels_last": lambda: F.max_pool2d(xc, 2, 2)},
                                       repeat)
            print(f"  maxpool 2x2/2 {c}x{hw}x{hw}: " + ", ".join(
                f"{t.name} {t.median * 1e3:.2f} ms" for t in times.values()))


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
    parser.add_argument("--no-tiny", action="store_true", help="only yolov3")
    parser.add_argument("--context", action="store_true",
                        help="also time inference(fast=False) and the exact model")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--profile", action="store_true", help="profile the fast path")
    parser.add_argument("--layers", action="store_true",
                        help="single layers: conv variants, max pooling layouts")
    args = parser.parse_args()
    common.set_threads(args.threads)
    for line in common.environment():
        print(line)
    if args.layers:
        with common.OtherLoad() as other:
            layers(args.repeat or 20)
        print("  " + other.line())
        return
    tiny = common.yolov3_tiny_files()
    if args.profile:
        profile(*tiny)
        if not args.no_yolov3:
            profile(*common.yolov3_files())
        return
    if not args.no_tiny:
        bench("yolov3-tiny", *tiny, args.repeat or 30, args.context, args.compile,
              "≤ 1.0 (stretch ≤ 0.8)")
    if not args.no_yolov3:
        bench("yolov3", *common.yolov3_files(), args.repeat or 10, args.context, args.compile,
              "≤ 1.0")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
