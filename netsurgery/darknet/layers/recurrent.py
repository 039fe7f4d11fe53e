"""[rnn], [gru] and [lstm]: recurrent layers built from [connected] sub-layers (AlexeyAB's
rnn_layer.c, gru_layer.c, lstm_layer.c).

Each sub-layer stores what a [connected] layer stores, in Darknet's file order: biases,
weights (outputs × inputs), then, with ``batch_normalize=1``, scales, rolling_mean,
rolling_variance. The arrays are named ``<sub-layer>.<array>`` (``input_layer.weights``).

Inference follows Darknet's CPU forward with one time step per call (what ``load_network``
sets up: ``time_steps=1``): each row of the batch is its own sequence, and the hidden state
carries over from one call to the next, as in Darknet (a fresh model starts from zeros;
``module.reset_state()`` starts again). Darknet counts no BFLOPS for these layers (its
connected sub-layers never set ``bflops``). Training them is not supported: Darknet trains
them over ``time_steps`` sequences, which netsurgery's trainer does not model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from netsurgery.darknet.cfg import Section
from netsurgery.errors import UsageError

from .activation import activate, activation_of
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
from .conv import add_batchnorm, batchnorm_arrays

torch, nn, F = lazy_torch(globals())

# normalize_cpu divides by sqrt(variance) + 1e-6 (not sqrt(variance + eps))
NORMALIZE_EPS = 1e-6


@dataclass(frozen=True)
class SubLayer:
    """One [connected] (or [convolutional]) sub-layer of a composite layer."""

    name: str
    n_in: int  # inputs (connected) or input channels (convolutional)
    n_out: int
    kernel: tuple[int, ...] = ()  # (size, size) for a convolution, () for connected
    groups: int = 1

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.n_out, self.n_in // self.groups, *self.kernel) if self.kernel else \
            (self.n_out, self.n_in)

    def conv_flops(self, out_h: int, out_w: int) -> float:
        """Darknet's count for a convolution: 2·weights·out_h·out_w."""
        n = 1
        for d in self.weight_shape:
            n *= d
        return 2.0 * n * out_h * out_w

    def arrays(self, batch_normalize: bool, transposed: bool = False) -> list[WeightArray]:
        """This sub-layer's arrays in file order (load_connected_weights or
        load_convolutional_weights)."""
        bn = batchnorm_arrays(self.n_out, f"{self.name}.") if batch_normalize else []
        if self.kernel:
            weights = WeightArray(f"{self.name}.weights", self.weight_shape)
            return [WeightArray(f"{self.name}.biases", (self.n_out,)), *bn, weights]
        shape = (self.n_in, self.n_out) if transposed else (self.n_out, self.n_in)
        return [WeightArray(f"{self.name}.biases", (self.n_out,)),
                WeightArray(f"{self.name}.weights", shape), *bn]


def sub_parameters(module, sub: SubLayer, batch_normalize: bool) -> None:
    """Register ``sub``'s arrays on ``module`` as ``<sub>__<array>`` (torch names cannot hold
    a dot); :func:`sub_tensors` gives them back under Darknet's names, in file order."""

    name = sub.name
    module.register_parameter(f"{name}__weights", nn.Parameter(torch.zeros(sub.weight_shape)))
    module.register_parameter(f"{name}__biases", nn.Parameter(torch.zeros(sub.n_out)))
    if batch_normalize:
        add_batchnorm(module, sub.n_out, f"{name}__")


def sub_tensors(module, sub: SubLayer, batch_normalize: bool) -> list[tuple[str, object]]:
    """(Darknet name, tensor) of ``sub``'s arrays in file order (see :meth:`SubLayer.arrays`)."""
    return [(a.name, getattr(module, a.name.replace(".", "__")))
            for a in sub.arrays(batch_normalize)]


def sub_forward(module, sub: SubLayer, x, activation: str, batch_normalize: bool,
                padding: int = 0, stride: int = 1):
    """Darknet's unfused forward of a sub-layer: y = W·x (a convolution for a kernel), with
    batch_normalize normalised by the rolling statistics (normalize_cpu: divided by
    sqrt(variance) + 1e-6) and scaled, plus the biases, then the activation."""

    def get(array):
        return getattr(module, f"{sub.name}__{array}")

    if sub.kernel:
        y = F.conv2d(x, get("weights"), None, stride, padding, 1, sub.groups)
        view = (1, -1, 1, 1)
    else:
        y = x.flatten(1) @ get("weights").t()
        view = (1, -1)
    if batch_normalize:
        std = get("rolling_variance").sqrt() + NORMALIZE_EPS
        y = (y - get("rolling_mean").view(view)) / std.view(view) * get("scales").view(view)
    return activate(activation, y + get("biases").view(view))


class RecurrentModule(LayerModule):
    """Shared machinery: named sub-layers, the carried state, the refusal to train."""

    def __init__(self, spec: "RecurrentSpec"):
        super().__init__(spec)
        self.kind = spec.section.header
        self.out_shape = (spec.out_shape.c, spec.out_shape.h, spec.out_shape.w)
        self.batch_normalize = spec.batch_normalize
        self.subs = {sub.name: (sub, spec.sub_activation(sub.name)) for sub in spec.sublayers()}
        for sub in self.subs.values():
            sub_parameters(self, sub[0], self.batch_normalize)
        self.state: dict[str, object] = {}

    def weight_tensors(self):
        return [t for sub, _ in self.subs.values()
                for t in sub_tensors(self, sub, self.batch_normalize)]

    def sub(self, name: str, x, **conv):
        """Run sub-layer ``name`` on ``x`` (``conv``: padding/stride of a convolution)."""
        sub, activation = self.subs[name]
        return sub_forward(self, sub, x, activation, self.batch_normalize, **conv)

    def reset_state(self) -> None:
        """Start the next call from zero state, like a freshly loaded Darknet network."""
        self.state = {}

    def carried(self, key: str, like, shape) -> object:
        """The state ``key`` from the previous call (zeros at first, or when the batch
        size changed)."""
        old = self.state.get(key)
        if old is None or old.shape != shape or old.device != like.device:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        return old

    def check_inference(self) -> None:
        if self.training:
            raise UsageError(f"layer {self.index} [{self.kind}]: training recurrent layers is "
                             "not supported by netsurgery (inference only)")


@dataclass(eq=False)
class RecurrentSpec(LayerSpec):
    outputs: int = 1
    batch_normalize: bool = False
    n_inputs: int = 1

    def sublayers(self) -> list[SubLayer]:
        raise NotImplementedError

    def sub_activation(self, name: str) -> str:
        return "linear"

    def weight_arrays(self, transposed: bool = False) -> list[WeightArray]:
        return [a for sub in self.sublayers() for a in sub.arrays(self.batch_normalize,
                                                                    transposed)]

    def to_module_layout(self, name, array, transposed):
        """Connected sub-layer weights stored (inputs, outputs) in a transposed file."""
        if transposed and name.endswith(".weights") and array.ndim == 2:
            return array.T
        return array

    def to_file_layout(self, name, array, transposed):
        return self.to_module_layout(name, array, transposed)

    def describe(self) -> str:
        return f"{self.n_inputs} -> {self.outputs}" + (" bn" if self.batch_normalize else "")

    @classmethod
    def _common(cls, index: int, section: Section, ctx: BuildContext):
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.outputs = positive(section, index, "output", section.get_int("output", 1))
        spec.batch_normalize = bool(section.get_int("batch_normalize", 0))
        spec.n_inputs = spec.in_shape.numel
        # Darknet leaves GRU's out_c at 0 and gives RNN/LSTM 1x1xoutput: (output, 1, 1)
        spec.out_shape = Shape(spec.outputs, 1, 1)
        return spec


@register("rnn")
@dataclass(eq=False)
class RnnSpec(RecurrentSpec):
    """state = (state if shortcut) + input_layer(x) + self_layer(state); out = output_layer."""

    hidden: int = 1
    activation: str = "logistic"
    self_activation: str = "logistic"
    shortcut: bool = False

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "RnnSpec":
        spec = cls._common(index, section, ctx)
        spec.hidden = positive(section, index, "hidden", section.get_int("hidden", 1))
        spec.activation = activation_of(section, index, "logistic")
        log = section.get_int("logistic", 0)
        spec.self_activation = {1: "logistic", 2: "loggy"}.get(log, spec.activation)
        spec.shortcut = bool(section.get_int("shortcut", 0))
        return spec

    def sublayers(self) -> list[SubLayer]:
        return [SubLayer("input_layer", self.n_inputs, self.hidden),
                SubLayer("self_layer", self.hidden, self.hidden),
                SubLayer("output_layer", self.hidden, self.outputs)]

    def sub_activation(self, name: str) -> str:
        return self.self_activation if name == "self_layer" else self.activation

    def build(self):
        return RnnModule(self)


class RnnModule(RecurrentModule):
    def __init__(self, spec: RnnSpec):
        super().__init__(spec)
        self.hidden = spec.hidden
        self.shortcut = spec.shortcut

    def forward(self, x, outputs):
        self.check_inference()
        state = self.carried("state", x, (x.shape[0], self.hidden))
        new = self.sub("input_layer", x) + self.sub("self_layer", state)
        if self.shortcut:
            new = new + state
        self.state["state"] = new.detach()
        return self.sub("output_layer", new).view(x.shape[0], *self.out_shape)


@register("gru")
@dataclass(eq=False)
class GruSpec(RecurrentSpec):
    """z, r = σ(input(x) + state(h)); h' = σ(input_h(x) + state_h(r·h)) (AlexeyAB's C build
    has no USET: logistic, not tanh); out = z·h + (1−z)·h' becomes the state."""

    def sublayers(self) -> list[SubLayer]:
        i, o = self.n_inputs, self.outputs
        return [SubLayer("input_z_layer", i, o), SubLayer("input_r_layer", i, o),
                SubLayer("input_h_layer", i, o), SubLayer("state_z_layer", o, o),
                SubLayer("state_r_layer", o, o), SubLayer("state_h_layer", o, o)]

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "GruSpec":
        return cls._common(index, section, ctx)

    def build(self):
        return GruModule(self)


class GruModule(RecurrentModule):
    def forward(self, x, outputs):
        self.check_inference()
        sub = self.sub
        state = self.carried("state", x, (x.shape[0], self.out_shape[0]))
        z = torch.sigmoid(sub("state_z_layer", state) + sub("input_z_layer", x))
        r = torch.sigmoid(sub("state_r_layer", state) + sub("input_r_layer", x))
        h = torch.sigmoid(sub("input_h_layer", x) + sub("state_h_layer", state * r))
        out = z * state + (1 - z) * h  # weighted_sum_cpu(state, h, z)
        self.state["state"] = out.detach()
        return out.view(x.shape[0], *self.out_shape)


@register("lstm")
@dataclass(eq=False)
class LstmSpec(RecurrentSpec):
    """f, i, o = σ(w·h + u·x), g = tanh(w·h + u·x); c = f·c + i·g; h = o·tanh(c)."""

    gates: tuple[str, ...] = field(default=("f", "i", "g", "o"))

    def sublayers(self) -> list[SubLayer]:
        i, o = self.n_inputs, self.outputs
        return [SubLayer(f"w{g}", o, o) for g in self.gates] + \
            [SubLayer(f"u{g}", i, o) for g in self.gates]

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "LstmSpec":
        return cls._common(index, section, ctx)

    def build(self):
        return LstmModule(self)


class LstmModule(RecurrentModule):
    def forward(self, x, outputs):
        self.check_inference()
        shape = (x.shape[0], self.out_shape[0])
        h = self.carried("h", x, shape)
        c = self.carried("c", x, shape)
        pre = {g: self.sub(f"w{g}", h) + self.sub(f"u{g}", x) for g in ("f", "i", "g", "o")}
        f, i, o = (torch.sigmoid(pre[g]) for g in ("f", "i", "o"))
        g = torch.tanh(pre["g"])
        c = f * c + i * g
        h = o * torch.tanh(c)
        self.state.update(h=h.detach(), c=c.detach())
        return h.view(x.shape[0], *self.out_shape)
