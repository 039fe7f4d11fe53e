"""``netsurgery time``: measured inference time, and merged against separate heads."""
from __future__ import annotations

import sys

import click
import torch

from netsurgery.darknet.model import load_model
from netsurgery.detection.runner import load_runner
from netsurgery.detection.timing import format_timing, time_merged, time_model
from netsurgery.surgery.heads import load_heads

from .app import POSITIVE, SIZE, main, strict_option
from .runtime_options import runtime_options


@main.command("time")
@strict_option
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--heads", "heads_path", type=click.Path(dir_okay=False),
              help="OUT.heads.json of a merged network: time each head alone (= its own "
                   "network) against all heads at once.")
@click.option("--repeat", default=20, show_default=True, type=int, help="Timed rounds.")
@click.option("--size", type=SIZE, default=None, help="Input W,H instead of the cfg's.")
@click.option("--threads", type=POSITIVE, default=None,
              help="CPU threads for torch (and onnxruntime).")
@click.option("--images", "images", default=None,
              help="With a gated merged network: time every head with and without the gates "
                   "on these images (a folder, a .txt list or a .data file's valid list).")
@click.option("--max-images", default=200, show_default=True, type=int,
              help="Use at most this many of --images (the first ones).")
@runtime_options
def time_cmd(cfg, weights, heads_path, repeat, size, threads, images, max_images, runtime,
             onnx_path):
    """Median inference time per image of CFG/WEIGHTS (fast inference mode, batch 1, CPU)."""
    if threads is not None:
        torch.set_num_threads(threads)
    onnx = runtime == "onnxruntime" or onnx_path is not None
    if heads_path and onnx_path is not None:
        raise click.UsageError("--heads with --onnx: each head alone needs its own graph; "
                               "give --runtime onnxruntime without --onnx to export them")
    if heads_path and onnx:
        model = load_model(cfg, weights, size=size)
    else:
        model = load_runner(cfg, weights, size, "cpu", runtime, onnx_path, threads)
    heads = load_heads(heads_path, model.network) if heads_path else None
    show = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            click.echo(f"\r  round {done}/{total}", err=True, nl=done == total)

    net = model.network.net
    engine = "onnxruntime" if onnx else "torch"
    click.echo(f"{cfg} at {net.width}x{net.height}, {engine}, "
               f"{threads or torch.get_num_threads()} threads:")
    if heads is None:
        click.echo("  " + format_timing(time_model(model, repeat, progress)))
    elif onnx:
        from netsurgery.export.runtime import time_merged_onnx

        click.echo(format_timing(time_merged_onnx(model, heads, repeat, progress, threads)))
    elif images is None:
        click.echo(format_timing(time_merged(model, heads, repeat, progress)))
    else:
        from netsurgery.detection.timing import format_gated, time_gated

        batches = _image_batches(model, images, max_images)
        click.echo(format_gated(time_gated(model, heads, batches, repeat, progress)))


def _image_batches(model, images: str, limit: int) -> list:
    """Preprocessed batches of one for ``images`` (as detect reads them)."""
    import numpy as np

    from netsurgery.detection.detect import iter_images
    from netsurgery.detection.image import preprocess

    if images.endswith(".data"):
        from netsurgery.training.data import load_data_file

        images = str(load_data_file(images).require("valid"))
    net = model.network.net
    letterbox = bool(model.network.cfg.net.get_int("letter_box", 0))
    paths = []
    for path in iter_images([images]):
        paths.append(path)
        if len(paths) >= limit:
            break
    return [torch.from_numpy(np.ascontiguousarray(
        preprocess(p, net.width, net.height, letterbox)[0]))[None] for p in paths]
