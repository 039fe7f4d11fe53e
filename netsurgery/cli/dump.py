"""``netsurgery dump``."""
from __future__ import annotations

import click

from netsurgery.darknet.dump import dump_layers, load_input, save_npz
from netsurgery.darknet.model import load_model
from netsurgery.fileio import check_output

from .app import INT_LIST, main, strict_option


@main.command()
@strict_option
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="X.npy (1,C,H,W float32) or an image, preprocessed like Darknet.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="layers.npz")
@click.option("--layers", default="all", help="'all' or comma-separated layer indices.")
@click.option("--letterbox/--resize", default=False,
              help="Image preprocessing: letterbox (pjreddie, -letter_box) or stretch "
                   "(AlexeyAB's default).")
@click.option("--fast/--exact", default=False, help="Fast inference mode (BatchNorm folded).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def dump(cfg, weights, input_path, out, layers, letterbox, fast, overwrite):
    """Run CFG+WEIGHTS on one input and write every layer's output (conformance format)."""
    try:  # checked before the (slow) model load
        wanted = None if layers == "all" else INT_LIST.convert(layers, None, None)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint="'--layers'") from None
    check_output(out, [cfg, weights, input_path], overwrite)
    model = load_model(cfg, weights, inference=fast)
    for note in model.weights_notes:
        click.echo(note, err=True)
    x = load_input(input_path, model, letterbox)
    arrays = dump_layers(model, x, wanted)
    save_npz(out, arrays)
    click.echo(f"wrote {len(arrays) - 1} layer outputs to {out}")
