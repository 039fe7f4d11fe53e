"""[crnn], [conv_lstm] and [history]: recurrent layers over images (AlexeyAB's crnn_layer.c and
conv_lstm_layer.c).

[crnn] and [conv_lstm] are built from [convolutional] sub-layers; each stores what a
convolution stores, in Darknet's file order (biases, then scales, rolling_mean,
rolling_variance with ``batch_normalize=1``, then the kernel), named
``<sub-layer>.<array>``. Their BFLOPs are the sum of their convolutions' (plus, for
[conv_lstm], Darknet's 9 or 12 operations per output for the gates, at batch 1).

Inference is Darknet's CPU forward with one time step per call (see :mod:`.recurrent`): the
state carries over from one call to the next. Training is not supported.
"""
from __future__ import annotations

from dataclasses import dataclass

from netsurgery.darknet.cfg import Section

from .activation import activation_of
from .base import (
    BuildContext,
    LayerModule,
    LayerSpec,
    Shape,
    WeightArray,
    lazy_torch,
    positive,
    register,
)
from .conv import conv_padding
from .recurrent import RecurrentModule, SubLayer

torch, nn, F = lazy_torch(globals())


@dataclass(eq=False)
class _ConvRecurrentSpec(LayerSpec):
    """What [crnn] and [conv_lstm] share: the convolution geometry of their sub-layers."""

    outputs: int = 1  # output filters
    size: int = 3
    stride: int = 1
    padding: int = 0
    groups: int = 1
    activation: str = "linear"
    batch_normalize: bool = False
    xnor: bool = False

    @classmethod
    def _geometry(cls, index: int, section: Section, ctx: BuildContext, activation: str):
        s = section
        spec = cls(index, s, ctx.shape_of(index - 1))
        spec.size = positive(s, index, "size", s.get_int("size", 3))
        spec.stride = positive(s, index, "stride", s.get_int("stride", 1))
        spec.padding = conv_padding(s, spec.size)
        spec.outputs = positive(s, index, "output", s.get_int("output", 1))
        spec.groups = positive(s, index, "groups", s.get_int("groups", 1))
        spec.activation = activation_of(s, index, activation)
        spec.batch_normalize = bool(s.get_int("batch_normalize", 0))
        spec.xnor = bool(s.get_int("xnor", 0))
        i = spec.in_shape
        out_h = (i.h + 2 * spec.padding - spec.size) // spec.stride + 1
        out_w = (i.w + 2 * spec.padding - spec.size) // spec.stride + 1
        # The state has the input's size and is fed back through a convolution of the same
        # geometry: Darknet corrupts memory unless the convolutions keep the size.
        if (out_h, out_w) != (i.h, i.w):
            raise spec.error(f"size={spec.size}, stride={spec.stride}, padding={spec.padding} "
                             f"turn the {i.h}x{i.w} input into {out_h}x{out_w}: a recurrent "
                             "convolution must keep the size (stride=1, pad=1)", "size")
        if i.c % spec.groups or spec.outputs % spec.groups:
            raise spec.error(f"groups={spec.groups} must divide the input channels ({i.c}) "
                             f"and output ({spec.outputs})", "groups")
        spec.out_shape = Shape(spec.outputs, out_h, out_w)
        return spec

    def conv(self, name: str, n_in: int, n_out: int) -> SubLayer:
        return SubLayer(name, n_in, n_out, (self.size, self.size), self.groups)

    def sublayers(self) -> list[SubLayer]:
        raise NotImplementedError

    def sub_activation(self, name: str) -> str:
        return self.activation

    def weight_arrays(self, transposed: bool = False) -> list[WeightArray]:
        return [a for sub in self.sublayers() for a in sub.arrays(self.batch_normalize)]

    def flops(self) -> float:
        o = self.out_shape
        total = sum(sub.conv_flops(o.h, o.w) for sub in self.sublayers())
        return total / 32 if self.xnor else total

    def describe(self) -> str:
        return f"{self.outputs} {self.size}x{self.size}/{self.stride}" + \
            (" bn " if self.batch_normalize else " ") + self.activation

    def check_buildable(self) -> None:
        if self.xnor:
            raise self.error("xnor=1 is not supported by netsurgery's model", "xnor")


@register("crnn")
@dataclass(eq=False)
class CrnnSpec(_ConvRecurrentSpec):
    """state = (state if shortcut) + input_layer(x) + self_layer(state);
    out = output_layer(state), all three convolutions."""

    hidden: int = 1
    shortcut: bool = False

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "CrnnSpec":
        spec = cls._geometry(index, section, ctx, "logistic")
        spec.hidden = positive(section, index, "hidden", section.get_int("hidden", 1))
        spec.shortcut = bool(section.get_int("shortcut", 0))
        if spec.hidden % spec.groups:
            raise spec.error(f"groups={spec.groups} must divide hidden={spec.hidden}", "groups")
        return spec

    def sublayers(self) -> list[SubLayer]:
        return [self.conv("input_layer", self.in_shape.c, self.hidden),
                self.conv("self_layer", self.hidden, self.hidden),
                self.conv("output_layer", self.hidden, self.outputs)]

    def build(self):
        self.check_buildable()
        return CrnnModule(self)


class CrnnModule(RecurrentModule):
    def __init__(self, spec: CrnnSpec):
        super().__init__(spec)
        self.hidden = spec.hidden
        self.shortcut = spec.shortcut
        self.padding = spec.padding

    def forward(self, x, outputs):
        self.check_inference()
        n, _, h, w = x.shape
        state = self.carried("state", x, (n, self.hidden, h, w))
        new = self.sub("input_layer", x, padding=self.padding) + \
            self.sub("self_layer", state, padding=self.padding)
        if self.shortcut:
            new = new + state
        self.state["state"] = new.detach()
        return self.sub("output_layer", new, padding=self.padding)


@register("conv_lstm")
@dataclass(eq=False)
class ConvLstmSpec(_ConvRecurrentSpec):
    """An LSTM whose gates are convolutions: u· of the input, w· of the last output, v· of
    the cell (with ``peephole=1``). Darknet's CPU forward (what this follows) does not use
    ``bottleneck``, ``shortcut``, ``lstm_activation`` or ``time_normalizer`` (GPU only)."""

    peephole: bool = False
    bottleneck: bool = False
    state_constrain: int = 32

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "ConvLstmSpec":
        s = section
        spec = cls._geometry(index, s, ctx, "linear")
        spec.peephole = bool(s.get_int("peephole", 0))
        spec.bottleneck = bool(s.get_int("bottleneck", 0))
        spec.state_constrain = s.get_int("state_constrain", ctx.time_steps * 32)
        return spec

    def sublayers(self) -> list[SubLayer]:
        c, o = self.in_shape.c, self.outputs
        subs = [self.conv(f"v{g}", o, o) for g in "fio"] if self.peephole else []
        if self.bottleneck:  # one convolution of [h, input-part] with 2x channels
            subs.append(self.conv("wf", 2 * o, o))
        else:
            subs += [self.conv(f"w{g}", o, o) for g in "figo"]
        return subs + [self.conv(f"u{g}", c, o) for g in "figo"]

    def flops(self) -> float:
        # make_conv_lstm_layer adds the element-wise gate arithmetic: 12 (peephole) or 9
        # operations per output and batch item (batch 1, as `detector test` parses)
        gates = (12 if self.peephole else 9) * self.out_shape.numel
        return super().flops() + gates

    def build(self):
        self.check_buildable()
        if self.bottleneck:
            raise self.error("bottleneck=1 is not supported: Darknet's CPU forward has no "
                             "bottleneck path (only its GPU code does)", "bottleneck")
        return ConvLstmModule(self)


class ConvLstmModule(RecurrentModule):
    def __init__(self, spec: ConvLstmSpec):
        super().__init__(spec)
        self.padding = spec.padding
        self.peephole = spec.peephole
        self.state_constrain = spec.state_constrain

    def forward(self, x, outputs):
        self.check_inference()
        shape = (x.shape[0], *self.out_shape)
        h = self.carried("h", x, shape)
        c = self.carried("c", x, shape)

        def gate(g, cell=None):
            y = self.sub(f"w{g}", h, padding=self.padding) + \
                self.sub(f"u{g}", x, padding=self.padding)
            if cell is not None and self.peephole:
                y = y + self.sub(f"v{g}", cell, padding=self.padding)
            return y

        f = torch.sigmoid(gate("f", c))
        i = torch.sigmoid(gate("i", c))
        g = torch.tanh(gate("g"))
        c = f * c + i * g
        o = torch.sigmoid(gate("o", c))  # the output gate sees the new cell
        h = o * torch.tanh(c)
        if self.state_constrain:
            c = c.clamp(-self.state_constrain, self.state_constrain)
        self.state.update(h=h.detach(), c=c.detach())
        return h


@register("history")
@dataclass(eq=False)
class HistorySpec(LayerSpec):
    """The last ``history_size`` inputs stacked along the channels. With one time step per
    call (Darknet's inference) only the current input is written; the older slots stay 0."""

    history_size: int = 4

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "HistorySpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.history_size = positive(section, index, "history_size",
                                     section.get_int("history_size", 4))
        i = spec.in_shape
        spec.out_shape = Shape(i.c * spec.history_size, i.h, i.w)
        return spec

    def describe(self) -> str:
        return f"x{self.history_size}"

    def build(self):
        return HistoryModule(self)


class HistoryModule(LayerModule):
    def __init__(self, spec: HistorySpec):
        super().__init__(spec)
        self.slots = spec.history_size

    def forward(self, x, outputs):
        empty = x.new_zeros((x.shape[0], x.shape[1] * (self.slots - 1), *x.shape[2:]))
        return torch.cat([x, empty], dim=1)
