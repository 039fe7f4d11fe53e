"""``netsurgery sweep``."""
from __future__ import annotations

import click

from netsurgery.analysis.sweep import TIMING_REPEATS, format_sweep, run_sweep
from netsurgery.errors import UsageError

from .app import K_LIST, POSITIVE, main, strict_option


@main.command()
@strict_option
@click.option("--base", "base", nargs=2, required=True, metavar="BASE.cfg BASE.weights")
@click.option("--task-cfg", required=True, type=click.Path(dir_okay=False),
              help="The task network (its heads' classes/anchors).")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Task .data file.")
@click.option("--k", "ks", required=True, type=K_LIST, help="Share points, e.g. 40,48,64,73.")
@click.option("--iterations", type=POSITIVE, help="Training iterations per k (default: cfg).")
@click.option("--batch", type=POSITIVE)
@click.option("--no-end-to-end", is_flag=True, help="Skip the reference run with nothing frozen.")
@click.option("--no-augment", is_flag=True, help="Only resize/letterbox the images (no "
                                                "multi-scale either).")
@click.option("--no-multi-scale", is_flag=True,
              help="Train at the cfg's size although its last [yolo] says random=1.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--timing-repeats", default=TIMING_REPEATS, show_default=True, type=int,
              help="Interleaved timed rounds of merged against separate, per k.")
@click.option("--threads", type=int, default=None,
              help="CPU threads for torch (default: torch's choice; 1 is often faster and "
                   "steadier on a busy machine).")
@click.option("--overwrite", is_flag=True,
              help="Retrain the k values that --out holds with other settings.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
def sweep(base, task_cfg, data, ks, iterations, batch, no_end_to_end, no_augment,
          no_multi_scale, seed, timing_repeats, threads, overwrite, out):
    """Retrain from k+1 for every k, evaluate, and chart mAP against the savings. Every
    input is checked before the first k trains; a k that --out holds with the same settings
    is reused."""
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads {threads}: expected a positive number")
        import torch  # only here: the CLI's start-up stays free of torch

        torch.set_num_threads(threads)
    points = run_sweep(base[0], base[1], task_cfg, data, ks, out, iterations,
                       not no_end_to_end, batch, timing_repeats=timing_repeats,
                       augment=not no_augment, seed=seed, multi_scale=not no_multi_scale,
                       overwrite=overwrite, log=lambda m: click.echo(m, err=True))
    click.echo(format_sweep(points))
    click.echo(f"wrote {out}/sweep.csv, {out}/sweep.json, {out}/sweep.png")
