"""``netsurgery train``."""
from __future__ import annotations

import click
import torch

from netsurgery.errors import UsageError
from netsurgery.training.config import TrainConfig
from netsurgery.training.data import load_data_file
from netsurgery.training.train import FINAL_LOSS_ITERATIONS, TrainProgress
from netsurgery.training.train import train as run_training

from .app import DEVICE, POSITIVE, echo_err, main


@main.command(short_help="Retrain the layers after K on a new task, trunk 0..K frozen.")
@click.option("--cfg", "cfg", required=True, type=click.Path(dir_okay=False),
              help="The task network's cfg (its heads sized for the new classes).")
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="The base network's .weights.")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="The task's Darknet .data file (classes, train, valid, names).")
@click.option("--base-cfg", type=click.Path(dir_okay=False), default=None,
              help="The cfg the base weights belong to (default: the .cfg beside the "
                   "weights, else --cfg).")
@click.option("--freeze-until", type=int, default=None,
              help="Freeze layers 0..K (default: the cfg's stopbackward layer, else none; "
                   "-1 trains everything).")
@click.option("--iterations", type=POSITIVE, default=None,
              help="Total iterations (default: max_batches).")
@click.option("--batch", type=POSITIVE, default=None,
              help="Images per iteration (default: batch/subdivisions of [net], at most 16).")
@click.option("--lr", type=float, default=None, help="Learning rate (default: [net]).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the .data file's backup folder).")
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
@click.option("--no-augment", is_flag=True, help="Only resize/letterbox the images (no "
                                                "multi-scale either).")
@click.option("--no-multi-scale", is_flag=True,
              help="Train at the cfg's size although its last [yolo] says random=1.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--strict", is_flag=True, help="Stop at the first bad label instead of "
                                            "skipping the image.")
@click.option("--device", default="cpu", show_default=True, type=DEVICE)
@click.option("--threads", type=int, default=None,
              help="CPU threads for torch (default: torch's choice; 1 is often faster on "
                   "a busy machine).")
@click.option("--save-every", type=int, default=100, show_default=True,
              help="Write <stem>_last.weights every N iterations.")
@click.option("--keep-every", type=int, default=1000, show_default=True,
              help="Write <stem>_<iteration>.weights every N iterations.")
@click.option("--print-every", type=int, default=10, show_default=True,
              help="Progress line every N iterations.")
@click.option("--no-validate", is_flag=True, help="Skip the final mAP on the valid list.")
@click.option("--overwrite", is_flag=True, help="Start over in an --out that holds a run.")
def train(cfg, weights, data, base_cfg, freeze_until, iterations, batch, lr, out_dir, resume,
          no_augment, no_multi_scale, seed, strict, device, threads, save_every, keep_every,
          print_every, no_validate, overwrite):
    """Retrain layers K+1.. of a copy of the base network on a new task; layers 0..K stay
    bit-identical to the base weights (so the trunk can be shared)."""
    if out_dir is None:
        backup = load_data_file(data).backup
        if backup is None:
            raise UsageError(f"{data}: no 'backup = ...' line; pass --out DIR")
        out_dir = backup
    if print_every < 1:
        raise UsageError(f"--print-every {print_every}: expected a positive number")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads {threads}: expected a positive number")
        torch.set_num_threads(threads)

    def progress(info: TrainProgress) -> None:
        if info.iteration % print_every == 0 or info.iteration == info.iterations or \
                info.iteration == 1:
            echo_err(info.line())

    config = TrainConfig(cfg, weights, data, out_dir, freeze_until=freeze_until,
                         iterations=iterations, batch=batch, lr=lr, base_cfg=base_cfg,
                         resume=resume, overwrite=overwrite, augment=not no_augment,
                         multi_scale=not no_multi_scale, seed=seed, strict=strict,
                         validate=not no_validate, device=device, save_every=save_every,
                         keep_every=keep_every, log_every=print_every)
    result = run_training(config, progress=progress, log=echo_err)
    if result.rank != 0:
        return
    done = result.iterations - result.start_iteration
    tail = min(FINAL_LOSS_ITERATIONS, len(result.losses))
    summary = (f"loss {result.first_loss:.4f} -> {result.final_loss:.4f} (first iteration -> "
               f"mean of the last {tail}) in {done} iterations")
    if result.map50 is not None:
        summary += f", validation mAP@0.5 {result.map50:.4f}"
    click.echo(summary)
    click.echo(f"weights: {result.final_weights}")
    click.echo(f"cfg:     {result.cfg_path}")
    click.echo(f"log:     {result.log_csv}, chart: {result.chart}")
