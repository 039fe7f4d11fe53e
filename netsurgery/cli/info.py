"""``netsurgery info``: layer table, totals (Darknet's Total BFLOPS), share-until costs."""
from __future__ import annotations

import click

from netsurgery.analysis.cost import format_report, network_cost, report_to_json
from netsurgery.darknet.network import build_network
from netsurgery.darknet.validate import validate_network
from netsurgery.darknet.weights import load_weights
from netsurgery.fileio import HeadsInput, check_output
from netsurgery.jsonout import write_document

from .app import K_LIST, SIZE, main, strict_option


@main.command()
@strict_option
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Also report the header, coverage and NaN/Inf values of a .weights file.")
@click.option("--size", type=SIZE, help="Input W,H instead of the cfg's (changes FLOPs only).")
@click.option("--share-until", "share_until", type=K_LIST, default=None,
              help="K[,K...]: fraction of params/FLOPs in layers 0..K, frontier, savings.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Also write the report as JSON.")
@click.option("--heads", "heads_path", type=click.Path(dir_okay=False),
              help="OUT.heads.json of a merged network: also show what merging saves.")
@click.option("--overwrite", is_flag=True, help="Replace an existing JSON output.")
def info(cfg, weights, size, share_until, json_path, heads_path, overwrite):
    """Print CFG's layers with shapes, parameters and BFLOPs, and the totals."""
    if json_path:
        check_output(json_path, [cfg, weights, HeadsInput(heads_path) if heads_path else None],
                     overwrite)
    network = build_network(cfg, size)
    wf = load_weights(weights, network.layers) if weights else None
    report = network_cost(network, share_until or (), wf)
    click.echo(format_report(report), nl=False)
    savings = None
    if heads_path:
        from netsurgery.analysis.cost import format_savings, merge_savings, savings_to_json
        from netsurgery.surgery.heads import load_heads

        savings = merge_savings(network, load_heads(heads_path, network))
        click.echo("\nmerged network against separate networks:")
        click.echo(format_savings(savings))
    problems = validate_network(network)
    if problems:
        click.echo("\nchecks:")
        for problem in problems:
            click.echo(f"  {problem}")
    if json_path:
        data = report_to_json(report)
        data["problems"] = [{"index": p.index, "line": p.line, "severity": p.severity,
                             "message": p.message} for p in problems]
        if savings is not None:
            data["merge"] = savings_to_json(savings)
        write_document(json_path, "info", data)
        click.echo(f"wrote {json_path}")
