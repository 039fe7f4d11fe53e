"""``netsurgery suggest-k``."""
from __future__ import annotations

import click
import torch

from netsurgery.analysis.suggest import (
    format_suggestion,
    load_sweep_maps,
    spearman,
    suggest_k,
    write_json,
)
from netsurgery.errors import UsageError

from .app import INT_LIST, echo_err, main


@main.command("suggest-k", short_help="Rank the share points k by short training runs and "
                                      "recommend one, without a full sweep.")
@click.option("--cfg", "cfg", required=True, type=click.Path(dir_okay=False),
              help="The task network's cfg (its heads sized for the new classes).")
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="The base network's .weights.")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="The task's .data file (train and valid lists).")
@click.option("--base-cfg", type=click.Path(dir_okay=False), default=None,
              help="The cfg the base weights belong to (default: the .cfg beside the "
                   "weights, else --cfg).")
@click.option("--candidates", type=INT_LIST, default=None,
              help="Share points k, e.g. 4,6,8,10,12,13 (default: the ends of the "
                   "network's blocks).")
@click.option("--iterations", type=int, default=None,
              help="The training the prediction is for (default: max_batches).")
@click.option("--budget", type=float, default=0.25, show_default=True,
              help="Fraction of --iterations each candidate trains for (the start of the "
                   "sweep's own run of that k).")
@click.option("--tolerance", type=float, default=2.0, show_default=True,
              help="mAP points below the best candidate that are acceptable.")
@click.option("--batch", type=int, default=None, help="Images per iteration (as train).")
@click.option("--lr", type=float, default=None, help="Learning rate (default: [net]).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--dtype", default="auto", show_default=True,
              help="The short runs' arithmetic: float32, bfloat16 (autocast; the loss and "
                   "the weights stay float32), or auto: bfloat16 where the CPU has it in "
                   "hardware (AVX512-BF16, AMX), else float32.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the predictions as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Chart of predicted mAP and savings against k (.png or .svg).")
@click.option("--compare", "compare", type=click.Path(dir_okay=False, exists=True),
              multiple=True, help="A sweep.json to compare with (repeat for several seeds).")
def suggest_k_cmd(cfg, weights, data, base_cfg, candidates, iterations, budget, tolerance,
                  batch, lr, seed, threads, dtype, json_path, plot_path, compare):
    """Train every candidate's tail briefly on cached trunk features, rank the candidates by
    training speed, predict their mAP@0.5, and recommend the largest k that is within
    --tolerance of the best with probability 0.8 (else the most probable one)."""
    from netsurgery.analysis.plots import chart_format, plot_suggestion

    if plot_path:
        chart_format(plot_path)  # refuse a bad extension before the work
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads {threads}: expected a positive number")
        torch.set_num_threads(threads)
    measured = load_sweep_maps(compare) if compare else None
    result = suggest_k(cfg, weights, data, base_cfg, candidates, iterations, budget,
                       tolerance, batch, lr, seed, dtype, log=echo_err)
    means = {k: sum(v) / len(v) for k, v in measured.items()} if measured else None
    click.echo(format_suggestion(result, means))
    if means:
        pairs = [(c.predicted_map, means[c.k]) for c in result.candidates if c.k in means]
        rho = spearman([p for p, _ in pairs], [m for _, m in pairs])
        click.echo(f"Spearman rank correlation with the sweep: {rho:.2f} ({len(pairs)} k)")
    if json_path:
        write_json(result, json_path)
        click.echo(f"wrote {json_path}")
    if plot_path:
        plot_suggestion(result, plot_path, measured)
        click.echo(f"wrote {plot_path}")
