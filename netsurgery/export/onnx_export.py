"""Export a Darknet network — plain or merged with several heads — to one ONNX file.

The graph is written node by node from the layer specs (:mod:`netsurgery.export.layers`)
with :mod:`onnx.helper`, not through ``torch.onnx.export``: torch 2.13's default exporter
(``dynamo=True``) needs ``onnxscript`` and its TorchScript exporter is deprecated with a
removal warning; building the graph ourselves gives readable, stable names, BatchNorm folded
and constants precomputed, any opset from 13, and the same bytes on every run.

Outputs: without ``decode`` one per detection layer, named ``HEAD/LAYER`` (``coco/16``),
equal to our model's head outputs; with ``decode`` per head ``HEAD/boxes``,
``HEAD/objectness``, ``HEAD/probs`` (see :mod:`netsurgery.export.decode`). The input is
``input``: float32 (batch, channels, height, width), RGB in [0, 1], resized or letterboxed
by the caller. The metadata key ``netsurgery`` holds JSON: input size, heads (layers,
class names), and which output is which layer.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from netsurgery import __version__
from netsurgery.darknet.model import DarknetModel, load_model
from netsurgery.detection.detect import HeadInfo, heads_of
from netsurgery.errors import NetsurgeryError, UsageError
from netsurgery.fileio import atomic_write_bytes, check_output
from netsurgery.surgery.heads import load_heads

from .decode import decode_head
from .graph import OnnxGraph, require
from .layers import emit_layer

METADATA_KEY = "netsurgery"
METADATA_FORMAT = "netsurgery-onnx/1"
INPUT_NAME = "input"
DEFAULT_OPSET = 17  # widely read by deployment runtimes; any of 13..newest works here
MIN_OPSET = 13  # Slice/Pad/Clip/Resize/Softmax with today's signatures
MAX_BYTES = 2_000_000_000  # protobuf's 2 GiB message limit, with room for the graph


@dataclass
class OnnxOutput:
    """One graph output: its name and what it is."""

    name: str
    kind: str  # "head" (a detection layer), "layer" (any other layer), boxes/objectness/probs
    layer: int | None = None
    head: str | None = None


@dataclass
class ExportInfo:
    """What an exported graph holds (also its ``netsurgery`` metadata, as JSON)."""

    cfg: str
    width: int
    height: int
    channels: int
    batch: int | None  # None: dynamic
    decoded: bool
    opset: int
    heads: list[dict] = field(default_factory=list)  # name, layers, classes, class_names
    outputs: list[OnnxOutput] = field(default_factory=list)
    format: str = METADATA_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ExportInfo":
        data = json.loads(text)
        data["outputs"] = [OnnxOutput(**o) for o in data["outputs"]]
        return cls(**data)

    def output_of(self, layer: int) -> str | None:
        """The output holding layer ``layer``'s raw output, if any."""
        for o in self.outputs:
            if o.layer == layer and o.kind in ("head", "layer"):
                return o.name
        return None


def export_heads(model: DarknetModel, heads_path: str | os.PathLike | None = None,
                 names_path: str | os.PathLike | None = None,
                 base_name: str | None = None) -> list[HeadInfo]:
    """The heads to export: from a merged network's heads file, else one head (all detection
    layers) named ``base_name`` (the cfg's stem). The one place that reads a heads file."""
    heads = load_heads(heads_path, model.network) if heads_path else None
    if heads is None and not model.network.heads():
        return []  # a classifier: build_onnx exports its last layer
    infos = heads_of(model, heads, names_path)
    if heads is None and base_name:
        infos[0].name = base_name
    return infos


def check_opset(opset: int) -> int:
    onnx = require("onnx")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(f"--opset {opset}: expected {MIN_OPSET}..{newest} (this onnx "
                         f"{onnx.__version__}); {DEFAULT_OPSET} is the default")
    return opset


@dataclass
class ExportedModel:
    """An exported graph: the ``onnx.ModelProto``, its serialised bytes (what is written
    and what onnxruntime loads) and its metadata."""

    proto: object
    data: bytes
    info: ExportInfo


def build_onnx(model: DarknetModel, heads: Sequence[HeadInfo], batch: int | None = 1,
               decode: bool = False, opset: int = DEFAULT_OPSET,
               extra_layers: Sequence[int] = (), cfg_name: str = "") -> ExportedModel:
    """The ONNX model of ``model`` for ``heads``, checked with ``onnx.checker``.
    ``batch`` None makes the batch dimension dynamic. ``extra_layers`` adds raw outputs
    ``layer/N`` (e.g. what a [region] head decodes from). Only the layers the outputs depend
    on are in the graph."""
    onnx = require("onnx")
    from onnx import TensorProto, helper

    check_opset(opset)
    if batch is not None and batch < 1:
        raise UsageError(f"--batch {batch}: expected a positive number")
    network = model.network
    if not heads and not extra_layers:
        extra_layers = network.outputs()
    head_layers = [layer for h in heads for layer in h.layers]
    targets = list(dict.fromkeys(head_layers + list(extra_layers)))
    g = OnnxGraph(shapes=[s.out_shape for s in network.layers])
    tensors: dict[int, str] = {}
    for i in model.plan(targets).order:
        g.prefix = f"L{i:03d}"
        x = INPUT_NAME if i == 0 else tensors.get(i - 1, "")
        tensors[i] = emit_layer(g, network.layers[i], model.layers[i], x, tensors)
    outputs = _outputs(g, network, heads, tensors, decode, extra_layers)
    _name_outputs(g, [(o.name, t) for o, t, _ in outputs])
    size = sum(len(t.raw_data) for t in g.initializers)
    if size > MAX_BYTES:
        raise NetsurgeryError(f"{network.path}: {size / 1e9:.1f} GB of weights: an ONNX file "
                              "holds at most 2 GB without external data files")

    dim0 = batch if batch is not None else "batch"
    net = network.net
    opsets = [helper.make_opsetid("", opset)]
    # filled in place: make_graph + make_model would copy every weight twice
    proto = onnx.ModelProto(ir_version=helper.find_min_ir_version_for(opsets),
                            producer_name="netsurgery", producer_version=__version__)
    proto.opset_import.extend(opsets)
    graph = proto.graph
    graph.name = "netsurgery"
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.initializers)
    graph.input.append(helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.FLOAT, [dim0, net.channels, net.height, net.width]))
    graph.output.extend(helper.make_tensor_value_info(o.name, TensorProto.FLOAT, [dim0, *shape])
                        for o, _, shape in outputs)
    info = ExportInfo(cfg_name or Path(network.path or "network").name, net.width, net.height,
                      net.channels, batch, decode, opset,
                      [{"name": h.name, "layers": list(h.layers),
                        "classes": network.layers[h.layers[0]].classes,
                        "class_names": list(h.class_names)} for h in heads],
                      [o for o, _, _ in outputs])
    helper.set_model_props(proto, {METADATA_KEY: info.to_json()})
    data = proto.SerializeToString(deterministic=True)
    onnx.checker.check_model(data, full_check=True)  # bytes: no second serialisation
    return ExportedModel(proto, data, info)


def _outputs(g: OnnxGraph, network, heads: Sequence[HeadInfo], tensors: dict[int, str],
             decode: bool, extra_layers: Sequence[int]) -> list[tuple[OnnxOutput, str, list]]:
    """(what, internal tensor, shape without the batch) of every graph output."""
    outputs: list[tuple[OnnxOutput, str, list]] = []
    for h in heads:
        if not decode:
            outputs += [(OnnxOutput(f"{h.name}/{y}", "head", y, h.name), tensors[y],
                         network.layers[y].out_shape.as_list()) for y in h.layers]
            continue
        boxes, objectness, probs = decode_head(g, network, h.layers, tensors)
        specs = [network.layers[y] for y in h.layers]
        k = sum(s.out_shape.h * s.out_shape.w * len(s.mask) for s in specs)
        outputs += [(OnnxOutput(f"{h.name}/boxes", "boxes", head=h.name), boxes, [k, 4]),
                    (OnnxOutput(f"{h.name}/objectness", "objectness", head=h.name),
                     objectness, [k]),
                    (OnnxOutput(f"{h.name}/probs", "probs", head=h.name), probs,
                     [k, specs[0].classes])]
    return outputs + [(OnnxOutput(f"layer/{i}", "layer", i), tensors[i],
                       network.layers[i].out_shape.as_list()) for i in extra_layers]


def _name_outputs(g: OnnxGraph, wanted: list[tuple[str, str]]) -> None:
    """Give graph outputs their public names: the producing node's output is renamed; an
    Identity where that is not possible (the graph input, a tensor that is two outputs)."""
    renamed: dict[str, str] = {}
    for public, internal in wanted:
        source = renamed.get(internal, internal)
        if internal not in renamed and internal != INPUT_NAME and \
                g.rename_output(internal, public):
            renamed[internal] = public
            continue
        g.nodes.append(require("onnx").helper.make_node("Identity", [source], [public],
                                                        name=public))


@dataclass
class ExportResult:
    path: Path
    bytes: int
    info: ExportInfo


def export_onnx(cfg: str | os.PathLike, weights: str | os.PathLike, out: str | os.PathLike,
                heads_path: str | os.PathLike | None = None,
                names_path: str | os.PathLike | None = None,
                size: tuple[int, int] | None = None, batch: int | None = 1,
                decode: bool = False, opset: int = DEFAULT_OPSET,
                overwrite: bool = False) -> ExportResult:
    """``netsurgery export``: CFG + WEIGHTS (+ a merged network's heads file) to ``out``
    (.onnx, written atomically). ``batch`` None: dynamic batch dimension."""
    require("onnx")
    check_output(out, [cfg, weights, heads_path, names_path], overwrite)
    check_opset(opset)
    model = load_model(cfg, weights, size=size)  # eval mode: the emitters fold BatchNorm
    heads = export_heads(model, heads_path, names_path, Path(cfg).stem)
    exported = build_onnx(model, heads, batch, decode, opset, cfg_name=Path(cfg).name)
    atomic_write_bytes(out, exported.data)
    return ExportResult(Path(out), len(exported.data), exported.info)


def read_info(proto, source: str = "<onnx>") -> ExportInfo:
    """The ``netsurgery`` metadata of an exported model (ModelProto or onnxruntime's
    ``get_modelmeta().custom_metadata_map``)."""
    props = proto if isinstance(proto, dict) else {p.key: p.value for p in proto.metadata_props}
    try:
        return ExportInfo.from_json(props[METADATA_KEY])
    except (KeyError, TypeError, ValueError):
        raise NetsurgeryError(f"{source}: not exported by netsurgery (no readable "
                              f"'{METADATA_KEY}' metadata): export it with netsurgery "
                              "export") from None
