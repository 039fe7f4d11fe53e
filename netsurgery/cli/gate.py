"""``netsurgery gate``."""
from __future__ import annotations

import click

from .app import main


@main.command()
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--heads", "heads_path", required=True, type=click.Path(dir_okay=False),
              help="OUT.heads.json of the merged network.")
@click.option("--head", required=True, help="The task head to gate (never the base).")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="The task's .data: train images with and without its objects fit the gate; "
                   "valid images calibrate (even lines) and measure (odd lines) it.")
@click.option("--recall", default=0.99, show_default=True, type=float,
              help="Share of images holding the task's objects that must pass the gate, shown "
                   "with 95 %% confidence (Clopper–Pearson) on the calibration images.")
@click.option("--at", type=int, default=None,
              help="Base layer the gate reads (default: the task's share point).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--out", required=True, help="Output prefix: OUT.cfg, OUT.weights, ...")
@click.option("--overwrite", is_flag=True)
def gate(cfg, weights, heads_path, head, data_path, recall, at, seed, out, overwrite):
    """Add a gate to a task head of a merged network: a tiny presence classifier on the shared
    trunk, so the task's tail runs only on the images that need it."""
    from netsurgery.training.gate import format_report, gate_files

    report = gate_files(cfg, weights, heads_path, head, data_path, out, recall, at,
                        seed=seed, overwrite=overwrite, log=click.echo)
    click.echo(format_report(report))
    click.echo(f"wrote {out}.cfg, {out}.weights, {out}.heads.json, {out}.names "
               f"({report.seconds:.0f} s)")
