"""ONNX nodes for each Darknet layer type: the same computation as the layer's torch module
(``netsurgery.darknet.layers``), weights taken from the loaded model with BatchNorm folded
(Darknet's float64 fuse, the arrays our inference mode runs with).

Each emitter gets the graph, the layer's spec and module, the name of the previous layer's
output and the names of all earlier outputs, and returns the name of its output. Constants
are computed here in numpy (the graph is constant-folded as built). Every op used exists
from opset 13 on with the same meaning up to the newest opset.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from netsurgery.darknet.layers import LayerSpec
from netsurgery.darknet.layers.conv import CONV_BN_EPS, PLAIN_BN_EPS
from netsurgery.darknet.layers.fastconv import FoldScratch
from netsurgery.errors import NetsurgeryError

from .graph import OnnxGraph

Emitter = Callable[[OnnxGraph, LayerSpec, torch.nn.Module, str, list], str]
EMITTERS: dict[str, Emitter] = {}


def emits(*type_names: str):
    """Register the emitter of these layer types (``LayerSpec.type_name``)."""

    def deco(fn: Emitter) -> Emitter:
        for name in type_names:
            EMITTERS[name] = fn
        return fn

    return deco


# Layer types our model runs that have no ONNX counterpart here, and why.
NO_ONNX: dict[str, str] = {
    **dict.fromkeys(("rnn", "gru", "lstm", "crnn", "conv_lstm", "history"),
                    "its state carries over from one image to the next, which a stateless "
                    "ONNX graph cannot hold"),
    "local": "a locally connected layer (a kernel per output position) has no ONNX operator",
}


def emit_layer(g: OnnxGraph, spec: LayerSpec, module, x: str, outputs: list) -> str:
    """The nodes of one layer; a clear error naming the layer when its type has none."""
    emitter = EMITTERS.get(spec.type_name)
    if emitter is None:
        why = NO_ONNX.get(spec.type_name, "no equivalent ONNX operators are implemented for "
                                          "this layer type")
        raise NetsurgeryError(
            f"{spec.section.path or '<cfg>'}: layer {spec.index} [{spec.section.header}] has "
            f"no ONNX export ({why})")
    return emitter(g, spec, module, x, outputs)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().contiguous().numpy()


# -- activations ------------------------------------------------------------------------------
def activation(g: OnnxGraph, name: str, x: str) -> str:
    """Darknet activation ``name`` (see layers/activation.py for the formulas)."""
    if name == "linear":
        return x
    c = g.const
    simple = {"logistic": ("Sigmoid", {}), "relu": ("Relu", {}), "tanh": ("Tanh", {}),
              "leaky": ("LeakyRelu", {"alpha": 0.1}), "relie": ("LeakyRelu", {"alpha": 0.01}),
              "elu": ("Elu", {"alpha": 1.0}),
              "selu": ("Selu", {"alpha": 1.6732, "gamma": 1.0507})}
    if name in simple:
        op, attrs = simple[name]
        return g.op(op, [x], name, **attrs)
    if name == "relu6":
        return g.op("Clip", [x, c(0.0), c(6.0)], name)
    if name == "hardtan":
        return g.op("Clip", [x, c(-1.0), c(1.0)], name)
    if name == "mish":  # x·tanh(softplus(x)); the Mish op only exists from opset 18
        return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x])])], name)
    if name == "swish":
        return g.op("Mul", [x, g.op("Sigmoid", [x])], name)
    if name == "loggy":
        return g.op("Sub", [g.op("Mul", [g.op("Sigmoid", [x]), c(2.0)]), c(1.0)], name)
    if name == "ramp":
        return g.op("Add", [g.op("Relu", [x]), g.op("Mul", [x, c(0.1)])], name)
    if name == "gelu":
        inner = g.op("Add", [g.op("Mul", [x, c(0.797885)]),
                             g.op("Mul", [g.op("Pow", [x, c(3.0)]), c(0.035677)])])
        one_plus = g.op("Add", [g.op("Tanh", [inner]), c(1.0)])
        return g.op("Mul", [g.op("Mul", [x, c(0.5)]), one_plus], name)
    if name in _PIECEWISE:
        return _piecewise(g, x, *_PIECEWISE[name], name)
    raise ValueError(f"activation '{name}' has no ONNX export")  # activation_of checked it


# piecewise activations: (low threshold, f below it, high threshold, f above it, f between);
# each f is (a, b) for a·x + b (a None: x² / 2 + x, hard_mish)
_PIECEWISE = {
    "hard_mish": (-2.0, (0.0, 0.0), 0.0, (1.0, 0.0), None),
    "lhtan": (0.0, (0.001, 0.0), 1.0, (0.001, 1.0 - 0.001), (1.0, 0.0)),
    "plse": (-4.0, (0.01, 0.04), 4.0, (0.01, 1.0 - 0.04), (0.125, 0.5)),
}


def _affine(g: OnnxGraph, x: str, ab) -> str:
    if ab is None:  # hard_mish between -2 and 0: x·x/2 + x
        return g.op("Add", [g.op("Div", [g.op("Mul", [x, x]), g.const(2.0)]), x])
    a, b = ab
    if a == 0.0:
        return g.op("Mul", [x, g.const(0.0)])
    y = x if a == 1.0 else g.op("Mul", [x, g.const(a)])
    return y if b == 0.0 else g.op("Add", [y, g.const(b)])


def _piecewise(g: OnnxGraph, x: str, low: float, below, high: float, above, between,
               hint: str) -> str:
    """where(x > high, above(x), where(x > low, between(x), below(x))) — hard_mish's and
    lhtan/plse's branches (with the comparisons of layers/activation.py)."""
    mid = g.op("Where", [g.op("Greater", [x, g.const(low)]), _affine(g, x, between),
                         _affine(g, x, below)])
    return g.op("Where", [g.op("Greater", [x, g.const(high)]), _affine(g, x, above), mid],
                hint)


# -- layers with weights -----------------------------------------------------------------------
@emits("convolutional")
def _conv(g, spec, m, x, outputs):
    if m.batch_normalize and m.folded is not None:  # inference(fast=False) folded it
        weight, bias = (_np(t) for t in m.folded)
    elif m.batch_normalize:  # the same float64 fuse, single-threaded numpy (fastconv.py)
        folded, bias = FoldScratch(m.weights.numel()).fold(
            m.weights.detach().cpu().float(), m.biases, m.scales, m.rolling_mean,
            m.rolling_variance, CONV_BN_EPS)
        weight, bias = folded.contiguous().numpy(), bias.numpy()
    else:
        weight, bias = _np(m.weights), _np(m.biases)
    pad, k, d = m.pad, spec.size, m.dilation
    y = g.op("Conv", [x, g.const(weight, "weights"), g.const(bias, "biases")], "conv",
             kernel_shape=[k, k], strides=list(m.stride), pads=[pad] * 4,
             dilations=[d, d], group=m.groups)
    h, w = spec.in_shape.h, spec.in_shape.w
    onnx_h = (h + 2 * pad - d * (k - 1) - 1) // m.stride[0] + 1
    onnx_w = (w + 2 * pad - d * (k - 1) - 1) // m.stride[1] + 1
    if onnx_h != spec.out_shape.h:  # odd padding/dilation combinations: Darknet's size
        y = g.slice(y, 2, 0, spec.out_shape.h, "crop_h")
    if onnx_w != spec.out_shape.w:
        y = g.slice(y, 3, 0, spec.out_shape.w, "crop_w")
    return activation(g, spec.activation, y)


def _bn_factors(m, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with BatchNorm(y) = a·y + b, in float64 as Darknet's fuse, rounded once."""
    def f64(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().cpu().numpy()

    a = f64(m.scales) / np.sqrt(f64(m.rolling_variance) + eps)
    return a, f64(m.biases) - a * f64(m.rolling_mean)


@emits("connected")
def _connected(g, spec, m, x, outputs):
    flat = g.op("Flatten", [x], "flatten", axis=1)
    weight = m.weights.detach().double().cpu().numpy()
    if m.batch_normalize:
        a, b = _bn_factors(m, PLAIN_BN_EPS)
        weight, bias = weight * a[:, None], b
    else:
        bias = m.biases.detach().double().cpu().numpy()
    y = g.op("Gemm", [flat, g.const(weight, "weights"), g.const(bias, "biases")], "gemm",
             transB=1)
    return g.reshape(activation(g, spec.activation, y), [0, -1, 1, 1])


@emits("batchnorm")
def _batchnorm(g, spec, m, x, outputs):
    a, b = _bn_factors(m, PLAIN_BN_EPS)
    c = spec.in_shape.c
    y = g.op("Mul", [x, g.const(a.reshape(1, c, 1, 1), "bn_scale")])
    return g.op("Add", [y, g.const(b.reshape(1, c, 1, 1), "bn_bias")], "bn")


# -- pooling, resampling -----------------------------------------------------------------------
def _window_pool(g, spec, m, x, op: str, **attrs) -> str:
    """Darknet's window placement: negative pads crop the input (those cells are never in a
    window), the others go to the op (max ignores them, Darknet's average skips them)."""
    left, right, top, bottom = m.pad
    h, w = spec.in_shape.h, spec.in_shape.w
    if top < 0 or bottom < 0:
        x = g.slice(x, 2, max(0, -top), h + min(0, bottom), "crop_h")
    if left < 0 or right < 0:
        x = g.slice(x, 3, max(0, -left), w + min(0, right), "crop_w")
    pads = [max(0, top), max(0, left), max(0, bottom), max(0, right)]
    if max(pads) >= spec.size:  # onnxruntime wants pads smaller than the window
        raise spec.error(f"padding={spec.padding} is not smaller than size={spec.size}: "
                         "no ONNX pooling equivalent", "padding")
    return g.op(op, [x], spec.type_name, kernel_shape=[spec.size, spec.size],
                strides=[spec.stride_y, spec.stride_x], pads=pads, **attrs)


@emits("maxpool")
def _maxpool(g, spec, m, x, outputs):
    return _window_pool(g, spec, m, x, "MaxPool")


@emits("local_avgpool")
def _local_avgpool(g, spec, m, x, outputs):
    return _window_pool(g, spec, m, x, "AveragePool", count_include_pad=0)


@emits("avgpool")
def _avgpool(g, spec, m, x, outputs):
    return g.op("GlobalAveragePool", [x], "avgpool")


@emits("upsample")
def _upsample(g, spec, m, x, outputs):
    s = float(spec.stride)
    y = g.op("Resize", [x, "", g.const([1.0, 1.0, s, s], "scales")], "upsample", mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return g.op("Mul", [y, g.const(spec.scale)], "scale") if spec.scale != 1.0 else y


@emits("reorg", "reorg3d")
def _reorg(g, spec, m, x, outputs):
    flat = g.reshape(x, [0, -1], "flatten")
    moved = g.op("Gather", [flat, g.const(m.gather.cpu().numpy(), "index", np.int64)],
                 "gather", axis=1)
    return g.reshape(moved, [0, *spec.out_shape.as_list()], "reorg")


@emits("activation")
def _activation(g, spec, m, x, outputs):
    return activation(g, spec.activation, x)


@emits("dropout", "empty", "cost")
def _identity(g, spec, m, x, outputs):
    return x


@emits("crop")
def _crop(g, spec, m, x, outputs):
    dh, dw, h, w = m.window
    y = g.slice(g.slice(x, 2, dh, dh + h, "crop_h"), 3, dw, dw + w, "crop_w")
    if (m.scale, m.shift) == (1.0, 0.0):
        return y
    return g.op("Add", [g.op("Mul", [y, g.const(m.scale)]), g.const(m.shift)], "crop")


@emits("normalization")
def _normalization(g, spec, m, x, outputs):
    """x·(kappa + alpha·Σ x²)^−beta, the window sum as a 1×1 convolution over x²."""
    c = spec.in_shape.c
    window = _np(m.window).reshape(c, c, 1, 1)
    sums = g.op("Conv", [g.op("Mul", [x, x]), g.const(window, "window")], "window_sums",
                kernel_shape=[1, 1])
    base = g.op("Add", [g.op("Mul", [sums, g.const(m.alpha)]), g.const(m.kappa)])
    return g.op("Mul", [x, g.op("Pow", [base, g.const(-m.beta)])], "normalization")


@emits("implicit")
def _implicit(g, spec, m, x, outputs):
    """The learned constant, repeated over the batch of the previous output."""
    batch = g.slice(g.op("Shape", [x]), 0, 0, 1, "batch")
    shape = g.op("Concat", [batch, g.ints(list(m.weights.shape))], "shape", axis=0)
    return g.op("Expand", [g.const(_np(m.weights)[None], "weights"), shape], "implicit")


@emits("contrastive")
def _contrastive(g, spec, m, x, outputs):
    """Zeros at inference, as Darknet leaves the output."""
    return g.op("ConstantOfShape", [g.op("Shape", [x])], "zeros")


@emits("softmax")
def _softmax(g, spec, m, x, outputs):
    y = g.reshape(x, [0, spec.groups, -1], "groups")
    if spec.temperature != 1.0:
        y = g.op("Div", [y, g.const(spec.temperature)], "temperature")
    y = g.op("Softmax", [y], "softmax", axis=2)
    return g.reshape(y, [0, -1, 1, 1])


# -- layers that read earlier layers -----------------------------------------------------------
@emits("route")
def _route(g, spec, m, x, outputs):
    parts = [outputs[i] for i in spec.layers]
    if spec.groups > 1:
        step = [g.shapes[i].c // spec.groups for i in spec.layers]
        parts = [g.slice(p, 1, spec.group_id * n, (spec.group_id + 1) * n, "group")
                 for p, n in zip(parts, step)]
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, "route", axis=1)


@emits("shortcut")
def _shortcut(g, spec, m, x, outputs):
    weights = [_np(w) for w in m._source_weights(None)] if m.weights_type != "none" else None
    out = x if weights is None else g.op("Mul", [x, g.const(weights[0], "w0")])
    flat_len = spec.out_shape.numel
    for k, i in enumerate(spec.sources_):
        add = outputs[i]
        src = g.shapes[i]
        w = None if weights is None else weights[k + 1]
        if src == spec.out_shape:
            if w is not None:
                add = g.op("Mul", [add, g.const(w, f"w{k + 1}")])
            out = g.op("Add", [out, add], "add")
            continue
        # Darknet adds over the overlapping flat range, weights picked by output channel
        n = min(flat_len, src.numel)
        part = g.slice(g.reshape(add, [0, -1], "flat_src"), 1, 0, n, "overlap")
        if w is not None:
            c, hw = spec.out_shape.c, spec.out_shape.h * spec.out_shape.w
            per_value = np.repeat(w.reshape(-1), hw) if w.size == c else \
                np.full(c * hw, float(w.reshape(-1)[0]), np.float32)
            part = g.op("Mul", [part, g.const(per_value[:n].reshape(1, n), f"w{k + 1}")])
        if n < flat_len:
            part = g.op("Pad", [part, g.ints([0, 0, 0, flat_len - n], "pads")], "pad")
        flat = g.op("Add", [g.reshape(out, [0, -1], "flat"), part], "add")
        out = g.reshape(flat, [0, *spec.out_shape.as_list()])
    return activation(g, spec.activation, out)


@emits("sam", "scale_channels")
def _multiply(g, spec, m, x, outputs):
    return activation(g, spec.activation, g.op("Mul", [outputs[spec.source], x],
                                               spec.type_name))


# -- detection layers --------------------------------------------------------------------------
def _partly_activated(g: OnnxGraph, x: str, channels: int, fields: int, raw: tuple,
                      xy: tuple, scale: float, activate: bool = True) -> str:
    """Logistic on every channel but the ``raw`` entries (entry = channel % fields), then
    the ``xy`` entries scaled by scale_x_y — per-channel masks, no reshape."""
    k = np.arange(channels) % fields
    y = x
    if activate:
        keep = np.isin(k, raw).reshape(1, -1, 1, 1)
        y = g.op("Where", [g.const(keep, "raw", np.bool_), x, g.op("Sigmoid", [x])],
                 "activated")
    if scale != 1.0:
        s = np.float32(scale)
        is_xy = np.isin(k, xy).reshape(1, -1, 1, 1)
        # Darknet: v·s − (s−1)/2, the offset rounded to float32 as the module computes it
        offset = np.where(is_xy, -np.float32(0.5 * (scale - 1)), np.float32(0))
        y = g.op("Add", [g.op("Mul", [y, g.const(np.where(is_xy, s, np.float32(1)),
                                                 "scale_x_y")]),
                         g.const(offset, "offset_x_y")], "scaled")
    return y


@emits("yolo")
def _yolo(g, spec, m, x, outputs):
    """Logistic on x, y, objectness and classes; x, y scaled by scale_x_y; nothing activated
    with new_coords."""
    return _partly_activated(g, x, spec.in_shape.c, spec.classes + 5, (2, 3), (0, 1),
                             spec.scale_x_y, not spec.new_coords)


@emits("Gaussian_yolo")
def _gaussian_yolo(g, spec, m, x, outputs):
    """Per anchor x, σx, y, σy, w, σw, h, σh, objectness, classes: w and h raw."""
    return _partly_activated(g, x, spec.in_shape.c, spec.classes + 9, m.RAW, (0, 2),
                             spec.scale_x_y)


@emits("detection")
def _detection(g, spec, m, x, outputs):
    """YOLOv1's head: the input as is, with softmax over each location's classes."""
    flat = g.op("Flatten", [x], "flatten", axis=1)
    if m.softmax:
        locations, classes = m.class_block
        n = locations * classes
        scores = g.reshape(g.slice(flat, 1, 0, n, "scores"), [0, locations, classes])
        soft = g.reshape(g.op("Softmax", [scores], "softmax", axis=2), [0, n])
        rest = g.slice(flat, 1, n, spec.in_shape.numel, "boxes")
        flat = g.op("Concat", [soft, rest], "detection", axis=1)
    return g.reshape(flat, [0, -1, 1, 1])


@emits("region")
def _region(g, spec, m, x, outputs):
    fields = spec.coords + 1 + spec.classes
    h, w = spec.in_shape.h, spec.in_shape.w
    v = g.reshape(x, [0, spec.num, fields, h, w], "anchors")
    parts = [g.op("Sigmoid", [g.slice(v, 2, 0, 2, "xy")])]
    if spec.coords > 2:
        parts.append(g.slice(v, 2, 2, spec.coords, "wh"))
    parts.append(g.op("Sigmoid", [g.slice(v, 2, spec.coords, spec.coords + 1, "obj")]))
    cls = g.slice(v, 2, spec.coords + 1, fields, "classes")
    parts.append(g.op("Softmax", [cls], axis=2) if spec.softmax else g.op("Sigmoid", [cls]))
    return g.reshape(g.op("Concat", parts, "fields", axis=2), [0, -1, h, w], "region")
