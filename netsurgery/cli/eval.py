"""``netsurgery eval``."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from netsurgery.darknet.cfg import STRICT_DEFAULT
from netsurgery.detection.detect import check_detector_weights, heads_of
from netsurgery.detection.evaluate import evaluate_model, format_result, result_to_json
from netsurgery.detection.runner import load_runner
from netsurgery.errors import UsageError
from netsurgery.fileio import DataInput, HeadsInput, check_outputs
from netsurgery.jsonout import write_document
from netsurgery.surgery.heads import load_heads

from .app import DEVICE, FRACTION, SIZE, main, strict_option
from .runtime_options import runtime_options


def _data_by_head(data_files: tuple[str, ...], head_names: list[str] | None) -> dict[str, str]:
    """``[HEAD=]X.data`` values by head name ('' for the first head). ``HEAD=`` is a head
    name when the network has that head, or when the whole value is no existing file; so a
    path holding '=' can be given as it is."""
    by_head: dict[str, str] = {}
    known = head_names or ["model"]
    for item in data_files:
        name, sep, path = item.partition("=")
        if not sep or (name not in known and Path(item).exists()):
            name, path = "", item
        if name in by_head:
            raise UsageError(f"--data {item}: a second dataset for head "
                             f"'{name or 'model'}'")
        by_head[name] = path
    return by_head


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
@click.option("--iou", default=0.5, show_default=True, type=FRACTION)
@click.option("--points", default=0, show_default=True, type=click.Choice(["0", "11", "101"]),
              help="0: area under curve; 11: VOC2007; 101: COCO-style.")
@click.option("--thresh", default=0.005, show_default=True, type=FRACTION)
@click.option("--letterbox/--resize", default=None,
              help="Default: [net] letter_box of the cfg, as darknet detector map.")
@click.option("--size", type=SIZE, default=None,
              help="Run the network at W,H instead of the cfg's width, height (multiples of 32 "
                   "for YOLO cfgs).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
@click.option("--pr-chart", "pr_chart", type=click.Path(dir_okay=False),
              help="Precision-recall chart (.png/.svg); per head NAME_ prefixed if several.")
@click.option("--device", default="cpu", show_default=True, type=DEVICE)
@click.option("--overwrite", is_flag=True)
@runtime_options
def eval_cmd(cfg, weights, data_files, heads_path, iou, points, thresh, letterbox, size,
             json_path, pr_chart, device, overwrite, runtime, onnx_path, no_gates):
    """mAP with `darknet detector map` semantics (per head for merged networks). With
    --strict a bad label line or an unreadable image stops the run (default: the image is
    skipped and counted)."""
    merged = load_heads(heads_path) if heads_path else None
    by_head = _data_by_head(data_files, [g.name for g in merged.groups()] if merged else None)
    charts = {}
    if pr_chart:
        for name in by_head:
            target = Path(pr_chart)
            charts[name] = target.with_name(f"{name}_{target.name}") if len(by_head) > 1 \
                else target
    inputs = [cfg, weights, HeadsInput(heads_path) if heads_path else None,
              *map(DataInput, by_head.values())]
    check_outputs([json_path, *charts.values()], inputs, overwrite)
    model = load_runner(cfg, weights, size, device, runtime, onnx_path)
    check_detector_weights(model, weights)
    heads = heads_of(model, load_heads(heads_path, model.network) if heads_path else None,
                     gates=not no_gates)
    if "" in by_head:
        by_head[heads[0].name] = by_head.pop("")
        charts[heads[0].name] = charts.pop("", None)
    unknown = set(by_head) - {h.name for h in heads}
    if unknown:
        raise UsageError(f"--data for unknown head(s) {', '.join(sorted(unknown))}: the heads "
                         f"are {', '.join(h.name for h in heads)}")
    show = sys.stderr.isatty()
    report = {}
    for head in heads:
        if head.name not in by_head:
            continue
        progress = (lambda i, n: click.echo(f"\r{head.name}: {i}/{n}", err=True, nl=False)) \
            if show else None
        result = evaluate_model(model, by_head[head.name], head, iou, int(points), letterbox,
                                thresh, progress=progress,
                                strict=STRICT_DEFAULT.get())
        if show:
            click.echo("", err=True)
        for issue in result.coverage.issues:
            click.echo(f"skipped: {issue}", err=True)
        click.echo(format_result(result, f"== head {head.name} ({by_head[head.name]})"))
        report[head.name] = result_to_json(result)
        if charts.get(head.name):
            from netsurgery.analysis.plots import plot_pr_curves

            plot_pr_curves(result, charts[head.name],
                           f"{head.name}: precision-recall at IoU {iou:.2f}")
            click.echo(f"wrote {charts[head.name]}")
    if json_path:
        write_document(json_path, "eval", {"heads": report})  # one shape for 1 or N heads
