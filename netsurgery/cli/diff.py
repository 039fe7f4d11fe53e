"""``netsurgery diff``: per-layer relative weight differences of task models from a base."""
from __future__ import annotations

import click

from netsurgery.analysis.diff import diff_many, format_report, resolve_cfgs, write_csv, write_json
from netsurgery.fileio import check_output

from .app import INT_LIST, main, strict_option


@main.command()
@strict_option
@click.argument("base", type=click.Path(dir_okay=False), metavar="BASE.weights")
@click.argument("tasks", nargs=-1, required=True, type=click.Path(dir_okay=False),
                metavar="TASK.weights [TASK2.weights ...]")
@click.option("--cfg", "base_cfg", type=click.Path(dir_okay=False),
              help="The base cfg (default: BASE.cfg beside BASE.weights).")
@click.option("--task-cfg", "task_cfgs", multiple=True, type=click.Path(dir_okay=False),
              help="The task cfg: once for all tasks or once per task (default: TASK.cfg "
                   "beside each TASK.weights, else the base cfg).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Write one row per task, layer and array.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the full report(s) as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a chart (.png or .svg): boxes per layer for one task, one series "
                   "per task for several.")
@click.option("--log-y/--linear-y", "log_y", default=None,
              help="Y axis of the chart (default: logarithmic when the boxes span more than "
                   "three decades, else linear with larger maxima marked on the top edge).")
@click.option("--mark", "marks", type=INT_LIST, default="",
              help="K[,K...]: dashed lines in the chart at candidate share-until layers, e.g. "
                   "40,48,64,73.")
@click.option("--arrays", "arrays", default="weights,biases", show_default=True,
              help="NAME[,NAME...]: the chart's panels, one per array: weights, biases, "
                   "scales, rolling_mean, rolling_variance (the last three: BatchNorm).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def diff(base, tasks, base_cfg, task_cfgs, csv_path, json_path, plot_path, log_y, marks,
         arrays, overwrite):
    """Where did fine-tuning change the network? Relative differences of each layer's
    kernels, biases and BatchNorm arrays of TASK.weights from BASE.weights (fractions of the
    base), bit-identical layers, skipped layers whose shapes differ."""
    choice = resolve_cfgs(base, tasks, base_cfg, task_cfgs)
    for note in choice.notes:
        click.echo(f"using {note}", err=True)
    inputs = [base, *tasks, str(choice.base), *map(str, choice.tasks)]
    outputs = [p for p in (csv_path, json_path, plot_path) if p]
    if len(set(outputs)) < len(outputs):
        raise click.UsageError("--csv, --json and --plot must be different files")
    for out in outputs:
        check_output(out, inputs, overwrite)
    arrays = [a.strip() for a in arrays.split(",")] if arrays.strip() else []
    if plot_path:  # matplotlib is imported only when a chart is wanted
        from netsurgery.analysis.plots import chart_format, check_arrays

        chart_format(plot_path)
        check_arrays(arrays)
    reports = diff_many(choice.base, base, list(zip(choice.tasks, tasks)))
    if plot_path:
        from netsurgery.analysis.plots import check_marks

        check_marks(marks, reports[0].summary.n_layers)
    for i, report in enumerate(reports):
        if i:
            click.echo()
        click.echo(format_report(report), nl=False)
    if csv_path:
        write_csv(reports, csv_path)
        click.echo(f"wrote {csv_path}")
    if json_path:
        write_json(reports, json_path)
        click.echo(f"wrote {json_path}")
    if plot_path:
        from netsurgery.analysis.plots import plot_diff, plot_diff_tasks

        if len(reports) == 1:
            chart = plot_diff(reports[0], plot_path, log_y=log_y, marks=marks, arrays=arrays)
        else:
            chart = plot_diff_tasks(reports, plot_path, log_y=log_y, marks=marks,
                                    arrays=arrays)
        click.echo(f"wrote {chart.path} ({chart.width}x{chart.height})")
