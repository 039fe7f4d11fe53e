"""``netsurgery time``: measured inference time, and merged against separate heads."""
from __future__ import annotations

import sys

import click
import torch

from netsurgery.darknet.model import load_model
from netsurgery.detection.timing import format_timing, time_merged, time_model
from netsurgery.errors import UsageError
from netsurgery.surgery.heads import load_heads

from .app import SIZE, main, strict_option


@main.command("time")
@strict_option
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--heads", "heads_path", type=click.Path(dir_okay=False),
              help="OUT.heads.json of a merged network: time each head alone (= its own "
                   "network) against all heads at once.")
@click.option("--repeat", default=20, show_default=True, type=int, help="Timed rounds.")
@click.option("--size", type=SIZE, default=None, help="Input W,H instead of the cfg's.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
def time_cmd(cfg, weights, heads_path, repeat, size, threads):
    """Median inference time per image of CFG/WEIGHTS (fast inference mode, batch 1, CPU)."""
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads {threads}: expected a positive number")
        torch.set_num_threads(threads)
    model = load_model(cfg, weights, size=size, inference=True)
    heads = load_heads(heads_path, model.network) if heads_path else None
    show = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            click.echo(f"\r  round {done}/{total}", err=True, nl=done == total)

    net = model.network.net
    click.echo(f"{cfg} at {net.width}x{net.height}, {torch.get_num_threads()} threads:")
    if heads is None:
        click.echo("  " + format_timing(time_model(model, repeat, progress)))
    else:
        click.echo(format_timing(time_merged(model, heads, repeat, progress)))
