"""``netsurgery partial`` (Darknet's ``darknet partial``)."""
from __future__ import annotations

import click

from netsurgery.surgery.partial import write_partial

from .app import main, strict_option


@main.command()
@strict_option
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--layers", "n_layers", required=True, type=int,
              help="N: keep layers 0..N-1 (74 for darknet53.conv.74 from yolov3).")
@click.option("--reset-seen", is_flag=True,
              help="Set 'seen' to 0 like AlexeyAB's darknet partial (default: keep header).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def partial(cfg, weights, out, n_layers, reset_seen, overwrite):
    """Write the weights of CFG's first N layers from WEIGHTS to OUT."""
    result = write_partial(cfg, weights, out, n_layers, overwrite=overwrite,
                           reset_seen=reset_seen)
    last = result.layers_with_weights[-1] if result.layers_with_weights else None
    click.echo(f"wrote layers 0..{n_layers - 1} ({len(result.layers_with_weights)} with "
               f"weights, last {last}) to {out}: {result.size:,} bytes, header "
               f"{result.header.version()} seen {result.header.seen}")
