"""``netsurgery make-dataset``."""
from __future__ import annotations

import sys

import click

from netsurgery.training.synth import make_shapes_dataset, make_text_dataset

from .app import SIZE, main


@main.command("make-dataset")
@click.argument("kind", type=click.Choice(["text", "shapes"]))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--images", "n_images", default=200, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--size", type=SIZE, default=None, help="W,H of the images (text 416,416; "
              "shapes 160,160).")
@click.option("--photos", type=click.Path(file_okay=False, exists=True),
              help="Folder of photos to use as backgrounds (text only).")
@click.option("--valid-fraction", default=0.2, show_default=True, type=float)
@click.option("--negatives", "negative_fraction", default=0.0, show_default=True, type=float,
              help="Share of images without any object (empty labels), e.g. 0.8 for a stream "
              "where 20 % of the images hold the task's objects.")
@click.option("--overwrite", is_flag=True)
def make_dataset(kind, out, n_images, seed, size, photos, valid_fraction, negative_fraction,
                 overwrite):
    """Write a synthetic Darknet dataset (.data, names, lists, labels)."""
    show = sys.stderr.isatty()

    def progress(i, n):
        if show:
            click.echo(f"\r{kind}: {i}/{n} images", err=True, nl=False)

    if kind == "text":
        paths = make_text_dataset(out, n_images, seed, size or (416, 416), photos,
                                  valid_fraction, progress=progress, overwrite=overwrite,
                                  negative_fraction=negative_fraction)
    else:
        paths = make_shapes_dataset(out, n_images, seed, size or (160, 160),
                                    valid_fraction=valid_fraction, progress=progress,
                                    overwrite=overwrite, negative_fraction=negative_fraction)
    if show:
        click.echo("", err=True)
    click.echo(f"wrote {paths.data} ({len(paths.train_images)} train, "
               f"{len(paths.valid_images)} valid images)")
