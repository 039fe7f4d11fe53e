"""``netsurgery task-cfg``: the cfg of a task model derived from a base cfg."""
from __future__ import annotations

import click

from netsurgery.darknet.cfg import save_edited
from netsurgery.fileio import DataInput, check_output

from .app import POSITIVE, main, strict_option


@main.command("task-cfg")
@strict_option
@click.argument("base_cfg", type=click.Path(dir_okay=False))
@click.option("--classes", type=POSITIVE, help="Class count of the task (default: from --data).")
@click.option("--data", type=click.Path(dir_okay=False),
              help="Task .data file: class count, and anchors fitted to its training boxes.")
@click.option("--anchors/--keep-anchors", default=True, show_default=True,
              help="Fit anchors to the --data boxes (k-means on shape IoU) or keep the base's.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True)
def task_cfg(base_cfg, classes, data, anchors, out, overwrite):
    """Write BASE_CFG with its [yolo] heads retargeted to the task's classes (and anchors)."""
    from netsurgery.training.anchors import task_cfg_for_dataset

    check_output(out, [base_cfg, DataInput(data) if data else None], overwrite)
    if not data and not classes:
        raise click.UsageError("give --classes or --data")
    new, fitted, quality = task_cfg_for_dataset(base_cfg, data, classes, anchors)
    if fitted:
        click.echo(f"anchors: {' '.join(f'{w},{h}' for w, h in fitted)} (mean best IoU "
                   f"{quality:.3f} with the training boxes)")
    heads = [s for s in new.layers if s.type == "yolo"]
    save_edited(new, out, base_cfg)  # last, so a failed check leaves nothing; only the
    # retargeted keys change, the rest of the text is the user's
    click.echo(f"wrote {out}: {len(heads)} heads with {heads[0].get_int('classes')} classes")
