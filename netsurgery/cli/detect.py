"""``netsurgery detect``."""
from __future__ import annotations

import sys

import click

from netsurgery.detection.detect import (
    check_detector_weights,
    detect_images,
    heads_of,
    iter_images,
    plan_drawings,
    write_json,
)
from netsurgery.detection.runner import load_runner
from netsurgery.errors import DataError
from netsurgery.fileio import HeadsInput, ImagesInput, OutputGuard, check_outputs
from netsurgery.surgery.heads import load_heads

from .app import DEVICE, FRACTION, POSITIVE, SIZE, main, strict_option
from .runtime_options import runtime_options


@main.command()
@strict_option
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("--no-gates", is_flag=True,
              help="Run every head's tail on every image, even where a gate would skip it.")
@click.option("--heads", "heads_path", type=click.Path(dir_okay=False),
              help="OUT.heads.json of a merged network: decode each head on its own.")
@click.option("--names", type=click.Path(dir_okay=False), help="Class names (plain network).")
@click.option("--thresh", default=0.25, show_default=True, type=FRACTION)
@click.option("--nms", default=0.45, show_default=True, type=FRACTION,
              help="NMS IoU threshold (0: no NMS).")
@click.option("--letterbox/--resize", default=False,
              help="Keep the aspect ratio (-letter_box) or stretch (AlexeyAB's default).")
@click.option("--size", type=SIZE, default=None,
              help="Run the network at W,H instead of the cfg's width, height (multiples of 32 "
                   "for YOLO cfgs).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for annotated images (<stem>_detections.jpg).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write all detections (and the skipped images) as JSON.")
@click.option("--batch", default=4, show_default=True, type=POSITIVE, help="Images per forward.")
@click.option("--device", default="cpu", show_default=True, type=DEVICE)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (never an input).")
@runtime_options
def detect(cfg, weights, images, heads_path, names, thresh, nms, letterbox, size, out_dir,
           json_path, batch, device, overwrite, runtime, onnx_path, no_gates):
    """Detect objects in IMAGES (files, folders, or .txt lists) like `darknet detector test`."""
    inputs = [cfg, weights, HeadsInput(heads_path) if heads_path else None, names,
              *map(ImagesInput, images)]
    paths = list(iter_images(images))
    if not paths:
        raise DataError(f"no image found in {' '.join(images)}")
    drawings = plan_drawings(paths, out_dir) if out_dir else None
    guard = OutputGuard(inputs, overwrite)
    check_outputs([json_path], inputs, overwrite)
    for drawing in (drawings or {}).values():
        guard.check(drawing)
    model = load_runner(cfg, weights, size, device, runtime, onnx_path)
    check_detector_weights(model, weights)
    heads = heads_of(model, load_heads(heads_path, model.network) if heads_path else None, names,
                     gates=not no_gates)
    show = sys.stderr.isatty()

    def progress(i, what):
        if show:
            click.echo(f"\r[{i}] {what[-60:]:<60}", err=True, nl=False)

    result = detect_images(model, paths, heads, thresh, nms, letterbox, batch, out_dir, progress,
                           drawings)
    if show:
        click.echo("", err=True)
    current = None
    for r in result.records:
        if r.image != current:
            current = r.image
            click.echo(f"{r.image}:")
        b = r.box
        head = f"[{r.head}] " if len(heads) > 1 else ""
        click.echo(f"  {head}{r.class_name}: {r.prob * 100:.0f}%\t(left_x: {b.left:4d}   "
                   f"top_y: {b.top:4d}   width: {b.width:4d}   height: {b.height:4d})")
    for image, reason in result.failed:
        click.echo(f"skipped {image}: {reason}", err=True)
    processed = result.images - len(result.failed)
    if json_path:
        write_json(json_path, result)
    click.echo(f"{len(result.records)} detections in {processed} images"
               + (f", {len(result.failed)} skipped" if result.failed else ""))
    if processed == 0:
        raise DataError(f"no image could be read: all {result.images} skipped")
