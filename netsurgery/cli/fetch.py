"""``netsurgery fetch``."""
from __future__ import annotations

import click

from netsurgery.fetch import MODELS, fetch_model

from .app import main


@main.command()
@click.argument("model", type=click.Choice(sorted(MODELS)), default="yolov3-tiny")
@click.option("--dir", "folder", default="weights", show_default=True,
              type=click.Path(file_okay=False), help="Where to put cfg, weights and names.")
def fetch(model, folder):
    """Download official pretrained weights (sha256-verified, cached)."""
    got = fetch_model(model, folder, log=lambda m: click.echo(m, err=True))
    click.echo(f"{model}: {got.cfg}, {got.weights}, {got.names} (from {got.source})")
