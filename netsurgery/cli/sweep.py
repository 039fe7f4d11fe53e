"""``netsurgery sweep``."""
from __future__ import annotations

import click

from netsurgery.analysis.sweep import format_sweep, run_sweep

from .app import INT_LIST, main, strict_option


@main.command()
@strict_option
@click.option("--base", "base", nargs=2, required=True, metavar="BASE.cfg BASE.weights")
@click.option("--task-cfg", required=True, type=click.Path(dir_okay=False),
              help="The task network (its heads' classes/anchors).")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Task .data file.")
@click.option("--k", "ks", required=True, type=INT_LIST, help="Share points, e.g. 40,48,64,73.")
@click.option("--iterations", type=int, help="Training iterations per k (default: cfg).")
@click.option("--batch", type=int)
@click.option("--no-end-to-end", is_flag=True, help="Skip the reference run with nothing frozen.")
@click.option("--no-augment", is_flag=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(file_okay=False))
def sweep(base, task_cfg, data, ks, iterations, batch, no_end_to_end, no_augment, seed, out):
    """Retrain from k+1 for every k, evaluate, and chart mAP against the savings."""
    points = run_sweep(base[0], base[1], task_cfg, data, ks, out, iterations,
                       not no_end_to_end, batch, augment=not no_augment, seed=seed,
                       log=lambda m: click.echo(m, err=True))
    click.echo(format_sweep(points))
    click.echo(f"wrote {out}/sweep.csv, {out}/sweep.json, {out}/sweep.png")
