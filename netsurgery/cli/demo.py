"""``netsurgery demo``."""
from __future__ import annotations

import click

from netsurgery.demo import run_demo

from .app import main


@main.command()
@click.option("--out", "out_dir", default="demo", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--k", type=int, default=None, help="Share point (default 12 for yolov3-tiny).")
@click.option("--quick", is_flag=True, help="A small run (~1 minute) for CI and a first look.")
@click.option("--weights-dir", default="weights", show_default=True,
              type=click.Path(file_okay=False), help="Where the fetched yolov3-tiny is cached.")
def demo(out_dir, k, quick, weights_dir):
    """The whole method end to end on the real yolov3-tiny: train a text head, merge, report."""
    result = run_demo(out_dir, k, quick, weights_dir, log=lambda m: click.echo(m, err=True))
    click.echo(f"report: {result.report}")
