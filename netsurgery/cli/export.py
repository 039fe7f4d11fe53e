"""``netsurgery export``: a network (plain or merged) to one ONNX file."""
from __future__ import annotations

import click

from .app import SIZE, main


@main.command("export")
@click.argument("cfg", type=click.Path(dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="The .onnx file to write.")
@click.option("--heads", "heads_path", type=click.Path(dir_okay=False),
              help="OUT.heads.json of a merged network: outputs named after its heads.")
@click.option("--names", type=click.Path(dir_okay=False),
              help="Class names for the metadata (plain network).")
@click.option("--size", type=SIZE, default=None, help="Input W,H instead of the cfg's.")
@click.option("--batch", type=int, default=None, help="Fixed batch size (default 1).")
@click.option("--dynamic-batch", is_flag=True, help="A symbolic batch dimension.")
@click.option("--decode", is_flag=True,
              help="Per head boxes (input pixels), objectness and class probabilities, "
                   "ready for thresholding and NMS.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 17; 13 or newer).")
@click.option("--overwrite", is_flag=True)
def export_cmd(cfg, weights, out, heads_path, names, size, batch, dynamic_batch, decode, opset,
               overwrite):
    """Export CFG/WEIGHTS to ONNX (BatchNorm folded, checked, self-contained)."""
    from netsurgery.export import DEFAULT_OPSET, export_onnx

    if batch is not None and dynamic_batch:
        raise click.UsageError("--batch and --dynamic-batch exclude each other")
    result = export_onnx(cfg, weights, out, heads_path, names, size,
                         None if dynamic_batch else (batch or 1), decode,
                         opset or DEFAULT_OPSET, overwrite)
    info = result.info
    batch_text = "dynamic" if info.batch is None else str(info.batch)
    click.echo(f"wrote {result.path} ({result.bytes / 1e6:.1f} MB, opset {info.opset}, input "
               f"{batch_text}x{info.channels}x{info.height}x{info.width})")
    for o in info.outputs:
        click.echo(f"  output {o.name}")
