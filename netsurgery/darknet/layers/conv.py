"""[convolutional], [connected] and [batchnorm]: the layers that carry weights."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from netsurgery.darknet.cfg import Section

from .activation import activate, activate_, activation_of
from .base import (
    BuildContext,
    LayerModule,
    LayerSpec,
    LazyImport,
    ReferenceKey,
    Shape,
    WeightArray,
    lazy_torch,
    lazy_zeros,
    positive,
    register,
)

if TYPE_CHECKING:
    from .fastconv import FoldScratch, PackedConv

torch, nn, F = lazy_torch(globals())
fastconv = LazyImport("netsurgery.darknet.layers.fastconv", globals(), "fastconv")

# AlexeyAB folds convolution BatchNorm with eps 1e-5 (fuse_conv_batchnorm, as `detector test`
# does); its unfolded normalize_cpu, used by [connected] and [batchnorm], adds 1e-6.
CONV_BN_EPS = 1e-5
PLAIN_BN_EPS = 1e-6

# Options that change what a convolution computes and that our model does not implement.
# (flipped=1: Darknet transposes the kernel matrix when it loads the weights.)
# Darknet's BatchNorm arrays after the biases, in file order (the one list of their names)
BATCHNORM_ARRAYS = ("scales", "rolling_mean", "rolling_variance")


def batchnorm_arrays(channels: int, prefix: str = "") -> list[WeightArray]:
    """The BatchNorm arrays of a layer with ``channels`` outputs, in file order; ``prefix``
    names a sub-layer's (``"input_layer."``)."""
    return [WeightArray(prefix + n, (channels,)) for n in BATCHNORM_ARRAYS]


def add_batchnorm(module: LayerModule, channels: int, prefix: str = "") -> None:
    """Register trained ``scales`` and the rolling statistics (buffers) on ``module``, at
    Darknet's initial values; ``prefix`` names a sub-layer's (``"input_layer__"``)."""
    module.register_parameter(prefix + "scales", nn.Parameter(torch.ones(channels)))
    module.register_buffer(prefix + "rolling_mean", torch.zeros(channels))
    module.register_buffer(prefix + "rolling_variance", torch.ones(channels))


def conv_padding(section: Section, size: int) -> int:
    """Darknet's padding of a convolution (parse_convolutional, parse_crnn, parse_conv_lstm):
    ``padding=``, replaced by size/2 when ``pad=1``."""
    padding = section.get_int("padding", 0)  # read (and checked) even when pad=1 overrides it
    return size // 2 if section.get_int("pad", 0) else padding


def _batchnorm_tensors(module: LayerModule) -> list[tuple[str, torch.Tensor]]:
    return [(n, getattr(module, n)) for n in BATCHNORM_ARRAYS]


_UNSUPPORTED_CONV_OPTIONS = ("share_index", "antialiasing", "binary", "xnor", "coordconv",
                             "deform", "assisted_excitation", "flipped")


@register("convolutional")
@dataclass(eq=False)
class ConvSpec(LayerSpec):
    # share_index: the layer whose kernel this one uses; -1000000000 is Darknet's "none"
    reference_keys = (ReferenceKey("share_index", none=-1000000000),)
    decayed_arrays = ("weights",)

    filters: int = 1
    size: int = 1
    stride_x: int = 1
    stride_y: int = 1
    padding: int = 0
    groups: int = 1
    dilation: int = 1
    batch_normalize: bool = False
    activation: str = "logistic"
    load_scales: bool = True  # False with dontloadscales=1: the BN arrays are not in the file
    shares_weights: bool = False

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "ConvSpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        s = section
        spec.filters = positive(s, index, "filters", s.get_int("filters", 1))
        spec.size = positive(s, index, "size", s.get_int("size", 1))
        stride = positive(s, index, "stride", s.get_int("stride", 1))
        spec.stride_x = positive(s, index, "stride_x", s.get_int("stride_x", stride))
        spec.stride_y = positive(s, index, "stride_y", s.get_int("stride_y", stride))
        spec.groups = positive(s, index, "groups", s.get_int("groups", 1))
        spec.padding = conv_padding(s, spec.size)
        if spec.padding < 0:
            raise spec.error(f"padding={spec.padding}: expected ≥ 0", "padding")
        spec.dilation = positive(s, index, "dilation", s.get_int("dilation", 1))
        if spec.size == 1:
            spec.dilation = 1  # Darknet forces it: a 1x1 kernel has nothing to dilate
        spec.batch_normalize = bool(s.get_int("batch_normalize", 0))
        spec.activation = activation_of(s, index, "logistic")
        spec.load_scales = not s.get_int("dontloadscales", 0)
        spec.shares_weights = bool(spec.references())
        if spec.shares_weights:
            ctx.resolve(s, index, "share_index", s.get_int("share_index"))
        c = spec.in_shape.c
        if c % spec.groups or spec.filters % spec.groups:
            raise spec.error(f"groups={spec.groups} must divide the input channels ({c}) and "
                             f"filters ({spec.filters})", "groups")
        out_w = (spec.in_shape.w + 2 * spec.padding - spec.size) // spec.stride_x + 1
        out_h = (spec.in_shape.h + 2 * spec.padding - spec.size) // spec.stride_y + 1
        if out_w < 1 or out_h < 1:
            raise spec.error(f"input {spec.in_shape} is too small for size={spec.size}, "
                             f"stride={stride}: output would be {out_h}x{out_w}", "size")
        spec.out_shape = Shape(spec.filters, out_h, out_w)
        return spec

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (self.filters, self.in_shape.c // self.groups, self.size, self.size)

    def weight_arrays(self, transposed: bool = False) -> list[WeightArray]:
        if self.shares_weights:
            return []
        arrays = [WeightArray("biases", (self.filters,))]
        if self.batch_normalize and self.load_scales:
            arrays += batchnorm_arrays(self.filters)
        arrays.append(WeightArray("weights", self.kernel_shape))
        return arrays

    def initial_array(self, array: WeightArray, rng: np.random.Generator) -> np.ndarray:
        if array.name != "weights":
            return super().initial_array(array, rng)
        # make_convolutional_layer: uniform in ±sqrt(2 / (size·size·c/groups))
        bound = math.sqrt(2.0 / (self.size * self.size * self.in_shape.c // self.groups))
        return rng.uniform(-bound, bound, array.shape)

    def flops(self) -> float:
        n = self.filters * (self.in_shape.c // self.groups) * self.size * self.size
        flops = 2.0 * n * self.out_shape.h * self.out_shape.w
        # Darknet counts an XNOR convolution's bit operations as 1/32 of the float ones
        return flops / 32 if self.section.get_int("xnor", 0) else flops

    def describe(self) -> str:
        parts = [f"{self.filters} {self.size}x{self.size}/{self.stride_x}"]
        if self.stride_y != self.stride_x:
            parts[0] += f"x{self.stride_y}"
        if self.groups > 1:
            parts.append(f"g{self.groups}")
        if self.dilation > 1:
            parts.append(f"d{self.dilation}")
        parts.append(("bn " if self.batch_normalize else "") + self.activation)
        return " ".join(parts)

    def build(self) -> LayerModule:
        for key in _UNSUPPORTED_CONV_OPTIONS:
            if self.section.has(key) and self.section.get_str(key) not in ("0", ""):
                raise self.error(f"option {key} is not supported by netsurgery's model", key)
        return ConvModule(self)


class ConvModule(LayerModule):
    """Convolution + optional BatchNorm + activation. Parameters are named after Darknet's
    arrays so that the .weights order is explicit."""

    fresh_output = True  # always a new tensor: a later layer may reuse it once it is dead

    def __init__(self, spec: ConvSpec):
        super().__init__(spec)
        self.stride = (spec.stride_y, spec.stride_x)
        # Darknet pads by padding·dilation so that a dilated 3x3 with pad=1 keeps the size.
        self.pad = spec.padding * spec.dilation
        self.dilation = spec.dilation
        self.groups = spec.groups
        self.out_hw = (spec.out_shape.h, spec.out_shape.w)
        self.activation = spec.activation
        self.batch_normalize = spec.batch_normalize
        self.weights = nn.Parameter(lazy_zeros(*spec.kernel_shape))
        self.biases = nn.Parameter(torch.zeros(spec.filters))
        if spec.batch_normalize:
            add_batchnorm(self, spec.filters)
        self.load_scales = spec.load_scales
        self.in_chw = (spec.in_shape.c, spec.in_shape.h, spec.in_shape.w)
        self.folded: tuple[torch.Tensor, torch.Tensor] | None = None
        self.packed: PackedConv | None = None  # inference fast path (see fastconv.py)

    def weight_tensors(self):
        out = [("biases", self.biases)]
        if self.batch_normalize and self.load_scales:
            out += _batchnorm_tensors(self)
        out.append(("weights", self.weights))
        return out

    def resize(self, spec: ConvSpec) -> None:
        self.out_hw = (spec.out_shape.h, spec.out_shape.w)
        self.in_chw = (spec.in_shape.c, spec.in_shape.h, spec.in_shape.w)
        if self.packed is not None:  # oneDNN chose its kernel layout for the old size
            self.pack()

    def fold(self, scratch: FoldScratch | None = None) -> None:
        """Precompute BatchNorm folded into the kernel, in float64 like Darknet's
        fuse_conv_batchnorm, for inference. Training mode ignores the folded copy.
        With ``scratch`` (CPU float32 only) the kernel goes into its buffer, for packing."""
        if not self.batch_normalize:
            self.folded = None
            return
        if scratch is not None:
            self.folded = scratch.fold(self.weights, self.biases, self.scales,
                                       self.rolling_mean, self.rolling_variance, CONV_BN_EPS)
            return
        with torch.no_grad():
            std = torch.sqrt(self.rolling_variance.double() + CONV_BN_EPS)
            factor = self.scales.double() / std
            # channels_last: oneDNN packs from that layout without an intermediate copy.
            # float64 a slice of filters at a time: a whole-kernel float64 temporary is twice
            # the kernel (for yolov3-tiny's 1024×512×3×3, half the weights file).
            w = torch.empty_like(self.weights, memory_format=torch.channels_last)
            step = max(1, fastconv.FOLD_SLICE // max(1, self.weights[0].numel()))
            for a in range(0, w.shape[0], step):
                w[a:a + step] = self.weights[a:a + step].double().mul_(
                    factor[a:a + step].view(-1, 1, 1, 1))
            b = self.biases.double() - self.scales.double() * self.rolling_mean.double() / std
        self.folded = (w, b.to(self.biases.dtype).contiguous())

    def unfold(self) -> None:
        self.folded = None
        self.packed = None

    def pack(self, scratch: FoldScratch | None = None) -> bool:
        """Prepare the fast path: the kernel folded afresh and packed for oneDNN with the
        activation fused. The packed kernel replaces the folded copy (memory: one extra
        kernel, not two). False when this torch build or device has no such path (the
        model then keeps the folded kernel)."""
        if self.batch_normalize:
            self.fold(scratch)
            weight, bias = self.folded
        else:
            weight, bias = self.weights, self.biases
            if scratch is not None and not weight.is_contiguous(memory_format=torch.channels_last):
                weight = scratch.kernel(weight.shape).copy_(weight)  # see fold: no reorder copy
        self.packed = fastconv.pack_conv(weight, bias, self.stride, self.pad, self.dilation, self.groups,
                                self.activation, self.in_chw)
        if self.packed is not None:
            self.folded = None
        elif scratch is not None and self.batch_normalize:
            self.fold()  # the scratch is about to hold the next layer's kernel
        return self.packed is not None

    def _conv(self, x, weight, bias):
        y = F.conv2d(x, weight, bias, self.stride, self.pad, self.dilation, self.groups)
        if y.shape[-2:] != self.out_hw:  # odd padding/dilation combinations: Darknet's size
            y = y[..., : self.out_hw[0], : self.out_hw[1]]
        return y

    def forward(self, x, outputs):
        if not self.training:
            if self.packed is not None and x.device.type == "cpu" and not x.requires_grad:
                y = self.packed(x)
                if y.shape[-2:] != self.out_hw:
                    y = y[..., : self.out_hw[0], : self.out_hw[1]]
                return y if self.packed.fused else activate_(self.activation, y)
            if self.packed is not None and self.batch_normalize and (
                    self.folded is None or self.folded[0].device != x.device):
                self.fold()  # packed on CPU, asked to run elsewhere: fold where the weights are
            if self.folded is not None:
                y = self._conv(x, *self.folded)
                # y is ours alone and nobody differentiates through it: activate in place
                inplace = not (torch.is_grad_enabled() and y.requires_grad)
                return (activate_ if inplace else activate)(self.activation, y)
        if self.batch_normalize:
            y = self._conv(x, self.weights, None)
            y = F.batch_norm(y, self.rolling_mean, self.rolling_variance, self.scales,
                             self.biases, self.training, 0.01, CONV_BN_EPS)
        else:
            y = self._conv(x, self.weights, self.biases)
        return activate(self.activation, y)


@register("connected")
@dataclass(eq=False)
class ConnectedSpec(LayerSpec):
    decayed_arrays = ("weights",)

    outputs: int = 1
    batch_normalize: bool = False
    activation: str = "logistic"
    load_scales: bool = True  # False with dontloadscales=1: the BN arrays are not in the file

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "ConnectedSpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.outputs = positive(section, index, "output", section.get_int("output", 1))
        spec.batch_normalize = bool(section.get_int("batch_normalize", 0))
        spec.activation = activation_of(section, index, "logistic")
        spec.load_scales = not section.get_int("dontloadscales", 0)
        spec.out_shape = Shape(spec.outputs, 1, 1)
        return spec

    def weight_arrays(self, transposed: bool = False) -> list[WeightArray]:
        n_in = self.in_shape.numel
        shape = (n_in, self.outputs) if transposed else (self.outputs, n_in)
        arrays = [WeightArray("biases", (self.outputs,)), WeightArray("weights", shape)]
        if self.batch_normalize and self.load_scales:  # after the weights, unlike [conv]
            arrays += batchnorm_arrays(self.outputs)
        return arrays

    def initial_array(self, array: WeightArray, rng: np.random.Generator) -> np.ndarray:
        if array.name != "weights":
            return super().initial_array(array, rng)
        # make_connected_layer: uniform in ±sqrt(2 / inputs)
        bound = math.sqrt(2.0 / self.in_shape.numel)
        return rng.uniform(-bound, bound, array.shape)

    def to_module_layout(self, name: str, array: np.ndarray, transposed: bool) -> np.ndarray:
        # a transposed file stores the matrix (inputs, outputs); the module keeps
        # (outputs, inputs) like a file that is not
        return array.T if transposed and name == "weights" and array.ndim == 2 else array

    def to_file_layout(self, name: str, array: np.ndarray, transposed: bool) -> np.ndarray:
        return self.to_module_layout(name, array, transposed)  # a transposition is its inverse

    def flops(self) -> float:
        """0: Darknet's make_connected_layer never sets ``bflops``, so its Total BFLOPS leaves
        [connected] out (alexnet: 2.154, not 2.272 with the 0.117 of its three layers)."""
        return 0.0

    def describe(self) -> str:
        return f"{self.in_shape.numel} -> {self.outputs} " + \
            ("bn " if self.batch_normalize else "") + self.activation

    def build(self) -> nn.Module:
        return ConnectedModule(self)


class ConnectedModule(LayerModule):
    def __init__(self, spec: ConnectedSpec):
        super().__init__(spec)
        n_in = spec.in_shape.numel
        self.activation = spec.activation
        self.batch_normalize = spec.batch_normalize
        self.biases = nn.Parameter(torch.zeros(spec.outputs))
        self.weights = nn.Parameter(lazy_zeros(spec.outputs, n_in))
        if spec.batch_normalize:
            add_batchnorm(self, spec.outputs)
        self.load_scales = spec.load_scales

    def weight_tensors(self):
        out = [("biases", self.biases), ("weights", self.weights)]
        if self.batch_normalize and self.load_scales:
            out += _batchnorm_tensors(self)
        return out

    def forward(self, x, outputs):
        y = x.flatten(1)
        if self.batch_normalize:
            y = F.linear(y, self.weights)
            y = F.batch_norm(y, self.rolling_mean, self.rolling_variance, self.scales,
                             self.biases, self.training, 0.01, PLAIN_BN_EPS)
        else:
            y = F.linear(y, self.weights, self.biases)
        return activate(self.activation, y).view(y.shape[0], -1, 1, 1)


@register("batchnorm")
@dataclass(eq=False)
class BatchNormSpec(LayerSpec):
    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "BatchNormSpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.out_shape = spec.in_shape
        return spec

    def weight_arrays(self, transposed: bool = False) -> list[WeightArray]:
        return [WeightArray("biases", (self.in_shape.c,)), *batchnorm_arrays(self.in_shape.c)]

    def build(self) -> nn.Module:
        return BatchNormModule(self)


class BatchNormModule(LayerModule):
    def __init__(self, spec: BatchNormSpec):
        super().__init__(spec)
        c = spec.in_shape.c
        self.biases = nn.Parameter(torch.zeros(c))
        add_batchnorm(self, c)

    def weight_tensors(self):
        return [("biases", self.biases), *_batchnorm_tensors(self)]

    def forward(self, x, outputs):
        return F.batch_norm(x, self.rolling_mean, self.rolling_variance, self.scales,
                            self.biases, self.training, 0.01, PLAIN_BN_EPS)


