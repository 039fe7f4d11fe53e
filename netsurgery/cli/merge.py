"""``netsurgery merge`` and ``netsurgery split``."""
from __future__ import annotations

import click

from netsurgery.analysis.cost import format_savings, merge_savings
from netsurgery.errors import UsageError
from netsurgery.fileio import HeadsInput, check_outputs, staged_outputs
from netsurgery.surgery.heads import load_heads
from netsurgery.surgery.merge import merge_files, merged_outputs, parse_task_option, split
from netsurgery.surgery.weighted import load_weighted

from .app import LAYER_INDEX, main, strict_option


def _pairs(values, what):
    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r}: expected NAME=FILE", param_hint=what)
        k, f = v.split("=", 1)
        out[k] = f
    return out


@main.command()
@strict_option
@click.option("--base", "base", nargs=2, required=True, metavar="BASE.cfg BASE.weights",
              help="The deployed model; its layers and detections stay unchanged.")
@click.option("--task", "tasks", multiple=True, required=True,
              metavar="NAME=TASK.cfg:TASK.weights[@K]",
              help="A task model retrained from layer K+1 (repeatable; @K overrides "
                   "--share-until for this task).")
@click.option("--share-until", "share_until", type=LAYER_INDEX, default=None,
              help="Layers 0..K (Darknet indices, inclusive) are shared.")
@click.option("-o", "--out", required=True, metavar="OUT",
              help="Writes OUT.cfg, OUT.weights, OUT.heads.json and OUT.names (with "
                   "--common-classes also OUT.data).")
@click.option("--base-name", default="base", show_default=True, help="Name of the base head.")
@click.option("--names", "names", multiple=True, metavar="NAME=FILE",
              help="Class names file of a head (repeatable).")
@click.option("--common-classes", is_flag=True,
              help="Pad every head to one common class list so stock Darknet decodes all "
                   "heads with one names file.")
@click.option("--force", is_flag=True, help="Merge even if a task's trunk differs.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def merge(base, tasks, share_until, out, base_name, names, common_classes, force, overwrite):
    """One network, one trunk, several heads (base + tasks)."""
    warn = lambda m: click.echo(m, err=True)  # noqa: E731
    names_by_head = _pairs(names, "--names")
    heads_given = [base_name] + [parse_task_option(t, share_until)[0] for t in tasks]
    unknown = sorted(set(names_by_head) - set(heads_given))
    if unknown:
        raise UsageError(f"--names {unknown[0]}=...: no head named '{unknown[0]}'; the heads "
                         f"are {', '.join(heads_given)}")
    merged, heads = merge_files(base[0], base[1], tasks, out, share_until, names_by_head,
                                base_name, force, common_classes, overwrite, warn)
    written = merged_outputs(out, common_classes)
    click.echo(f"wrote {written[0]} ({len(merged)} layers), {', '.join(written[1:])}")
    for g in heads.groups():
        where = "base" if g.route is None else f"shares 0..{g.share_until}, route {g.route}, " \
                                                f"tail {g.tail[0]}..{g.tail[1]}"
        click.echo(f"  head {g.name}: {g.classes} classes, yolo layers "
                   f"{','.join(map(str, g.yolo_layers))} ({where})")
    click.echo(format_savings(merge_savings(merged.network, heads)))


@main.command("split")
@strict_option
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--heads", "heads_path", required=True, type=click.Path(dir_okay=False),
              help="OUT.heads.json written by merge.")
@click.option("--task", "name", required=True, help="Which head to extract.")
@click.option("-o", "--out", required=True, metavar="OUT", help="Writes OUT.cfg, OUT.weights.")
@click.option("--overwrite", is_flag=True)
def split_cmd(cfg, weights, heads_path, name, out, overwrite):
    """Extract one task's standalone network (trunk + its tail) from a merged network."""
    outs = [f"{out}.cfg", f"{out}.weights"]
    check_outputs(outs, [cfg, weights, HeadsInput(heads_path)], overwrite)
    merged = load_weighted(cfg, weights)
    alone = split(merged, load_heads(heads_path, merged.network), name)
    with staged_outputs(outs) as staged:  # both or none
        alone.save(staged[0], staged[1])
    click.echo(f"wrote {outs[0]} ({len(alone)} layers) and {outs[1]}")

