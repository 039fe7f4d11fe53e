"""Training speed of yolov3-tiny: frozen trunk (layers 0..12, run under no_grad) vs full
training, and the next batch prepared in a thread (prefetch) vs in place, images/s side by
side; optionally the long partial-retraining run (a few hundred iterations on a 3-class shapes
task) with its validation mAP@0.5.

    python benchmarks/bench_train.py                      # speed at 416, k=12 vs full
    python benchmarks/bench_train.py --mosaic             # the same with [net] mosaic=1
    python benchmarks/bench_train.py --long 400           # + 400 iterations on shapes, mAP
    python benchmarks/bench_train.py --skip-speed --long 300 --images 64 [--mosaic | --multi-scale]

Needs ../shared (yolov3-tiny.cfg and the COCO weights). Everything is written to a temporary
folder that is removed at the end.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CFG = SHARED / "darknet-cfg" / "yolov3-tiny.cfg"
WEIGHTS = SHARED / "models" / "yolov3-tiny.weights"


def task_cfg(out: Path, size: int, burn_in: int, mosaic: bool = False,
             multi_scale: bool = False) -> Path:
    """yolov3-tiny for 3 classes at size x size (multi-scale off unless asked for: the speed
    runs then all have one size)."""
    text = CFG.read_text()
    if not multi_scale:
        text = text.replace("random=1", "random=0")
    if mosaic:
        text = text.replace("[net]", "[net]\nmosaic=1", 1)
    for old, new in (("width=416", f"width={size}"), ("height=416", f"height={size}"),
                     ("filters=255", "filters=24"), ("classes=80", "classes=3"),
                     ("burn_in=1000", f"burn_in={burn_in}")):
        text = text.replace(old, new)
    path = out / f"shapes-tiny-{size}.cfg"
    path.write_text(text)
    return path


def speed(args, root: Path) -> None:
    from netsurgery.training.synth import make_shapes_dataset
    from netsurgery.training.train import TrainConfig, train

    data = make_shapes_dataset(root / "speed", 16, seed=1, size=(args.size, args.size),
                               valid_fraction=0).data
    cfg = task_cfg(root, args.size, burn_in=2, mosaic=args.mosaic)
    rates: dict[str, float] = {}
    setups = (("frozen 0..12", 12, True), ("full", -1, True),
              ("frozen, in place", 12, False))
    # alternate the set-ups and keep each one's best run: other processes on the machine
    # then bias all alike
    for repeat in range(args.repeats):
        for label, k, prefetch in setups:
            result = train(TrainConfig(cfg, WEIGHTS, data, root / f"out{k}_{prefetch}_{repeat}",
                                       freeze_until=k, iterations=args.iterations,
                                       batch=args.batch, base_cfg=CFG, augment=True,
                                       validate=False, save_every=10 ** 6, prefetch=prefetch))
            rates[label] = max(rates.get(label, 0.0), result.images_per_sec)
            print(f"  run {repeat + 1}: {label:17s} {result.images_per_sec:7.2f} images/s",
                  flush=True)
    frozen, full, in_place = (rates[label] for label, _, _ in setups)
    print(f"yolov3-tiny {args.size}x{args.size}, batch {args.batch}, {args.iterations} "
          f"iterations (first excluded), augmentation on{', mosaic' if args.mosaic else ''}, "
          f"best of {args.repeats}:")
    print(f"  frozen trunk {frozen:.2f} images/s | full {full:.2f} images/s | "
          f"ratio {frozen / full:.2f}x")
    print(f"  frozen trunk, batch prepared ahead {frozen:.2f} images/s | in place "
          f"{in_place:.2f} images/s | ratio {frozen / in_place:.2f}x")


def long_run(args, root: Path) -> None:
    from netsurgery.training.synth import make_shapes_dataset
    from netsurgery.training.train import TrainConfig, train

    data = make_shapes_dataset(root / "shapes", args.images, seed=7, size=(160, 160),
                               valid_fraction=0.25).data
    cfg = task_cfg(root, args.long_size, burn_in=20, mosaic=args.mosaic,
                   multi_scale=args.multi_scale)
    t0 = time.perf_counter()
    config = TrainConfig(cfg, WEIGHTS, data, root / "long", freeze_until=12,
                         iterations=args.long, batch=8, base_cfg=CFG,
                         augment=not args.no_augment, seed=0)
    result = train(config, log=lambda m: print("  " + m, flush=True),
                   progress=lambda p: print("  " + p.line(), flush=True)
                   if p.iteration % 50 == 0 else None)
    seconds = time.perf_counter() - t0
    print(f"long run: yolov3-tiny {args.long_size}x{args.long_size}, k=12, {args.long} "
          f"iterations x 8, {args.images} images (25 % validation), augmentation "
          f"{'off' if args.no_augment else 'on'}{', mosaic' if args.mosaic else ''}"
          f"{', multi-scale' if args.multi_scale else ''}: loss {result.first_loss:.2f} -> "
          f"{result.final_loss:.3f}, mAP@0.5 {result.map50:.4f}, {seconds:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mosaic", action="store_true", help="runs with mosaic=1")
    parser.add_argument("--multi-scale", action="store_true",
                        help="the long run with random=1 (multi-scale training)")
    parser.add_argument("--long", type=int, default=0, metavar="N",
                        help="also run N iterations of partial retraining and report mAP")
    parser.add_argument("--long-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--no-augment", action="store_true", help="for the long run")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not WEIGHTS.is_file():
        print(f"{WEIGHTS} not found: run beside the shared data folder", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        if not args.skip_speed:
            speed(args, root)
        if args.long:
            long_run(args, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
