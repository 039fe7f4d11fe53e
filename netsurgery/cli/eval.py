"""``netsurgery eval``."""
from __future__ import annotations

import json
import sys

import click

from netsurgery.detection.detect import heads_of
from netsurgery.detection.evaluate import evaluate_model, format_result, result_to_json
from netsurgery.detection.runner import load_runner
from netsurgery.fileio import atomic_write_text, check_output
from netsurgery.surgery.heads import load_heads

from .app import SIZE, main, strict_option
from .runtime_options import runtime_options


@main.command("eval")
@strict_option
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--data", "data_files", multiple=True, required=True, metavar="[HEAD=]X.data",
              help="Dataset (.data). For a merged network give one per head: NAME=X.data.")
@click.option("--no-gates", is_flag=True,
              help="Run every head's tail on every image, even where a gate would skip it.")
@click.option("--heads", "heads_path", type=click.Path(dir_okay=False),
              help="OUT.heads.json of a merged network.")
@click.option("--iou", default=0.5, show_default=True, type=float)
@click.option("--points", default=0, show_default=True, type=click.Choice(["0", "11", "101"]),
              help="0: area under curve; 11: VOC2007; 101: COCO-style.")
@click.option("--thresh", default=0.005, show_default=True, type=float)
@click.option("--letterbox/--resize", default=None,
              help="Default: [net] letter_box of the cfg, as darknet detector map.")
@click.option("--size", type=SIZE, default=None,
              help="Run the network at W,H instead of the cfg's width, height (multiples of 32 "
                   "for YOLO cfgs).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
@click.option("--pr-chart", "pr_chart", type=click.Path(dir_okay=False),
              help="Precision-recall chart (.png/.svg); per head NAME_ prefixed if several.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True)
@runtime_options
def eval_cmd(cfg, weights, data_files, heads_path, iou, points, thresh, letterbox, size,
             json_path, pr_chart, device, overwrite, runtime, onnx_path, no_gates):
    """mAP with `darknet detector map` semantics (per head for merged networks)."""
    if json_path:
        check_output(json_path, [cfg, weights], overwrite)
    model = load_runner(cfg, weights, size, device, runtime, onnx_path)
    heads = heads_of(model, load_heads(heads_path, model.network) if heads_path else None,
                     gates=not no_gates)
    by_head = {}
    for item in data_files:
        name, _, path = item.rpartition("=")
        by_head[name or heads[0].name] = path
    show = sys.stderr.isatty()
    report = {}
    for head in heads:
        if head.name not in by_head:
            continue
        progress = (lambda i, n: click.echo(f"\r{head.name}: {i}/{n}", err=True, nl=False)) \
            if show else None
        result = evaluate_model(model, by_head[head.name], head, iou, int(points), letterbox,
                                thresh, progress=progress)
        if show:
            click.echo("", err=True)
        click.echo(format_result(result, f"== head {head.name} ({by_head[head.name]})"))
        report[head.name] = result_to_json(result)
        if pr_chart:
            from pathlib import Path

            from netsurgery.analysis.plots import plot_pr_curves

            target = Path(pr_chart)
            if len(by_head) > 1:
                target = target.with_name(f"{head.name}_{target.name}")
            check_output(target, [cfg, weights], overwrite)
            plot_pr_curves(result, target, f"{head.name}: precision-recall at IoU {iou:.2f}")
            click.echo(f"wrote {target}")
    unknown = set(by_head) - set(report)
    if unknown:
        raise click.UsageError(f"--data for unknown head(s) {sorted(unknown)}: heads are "
                               f"{[h.name for h in heads]}")
    if json_path:
        payload = next(iter(report.values())) if len(report) == 1 else {"heads": report}
        atomic_write_text(json_path, json.dumps(payload, indent=1) + "\n")
