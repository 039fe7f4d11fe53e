"""Darknet activations (activations.h of AlexeyAB/darknet) as torch functions.

relu6 is computed as min(max(x, 0), 6): Darknet's CPU code returns 0 for it (a bug we do not
copy), so a network using relu6 gives different outputs in Darknet's CPU build."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from netsurgery.darknet.cfg import Section

from .base import BuildContext, LayerModule, LayerSpec, lazy_torch, register

torch, nn, F = lazy_torch(globals())


def _leaky(x):
    return F.leaky_relu(x, 0.1)


def _hard_mish(x):
    # x for x > 0, x²/2 + x on (-2, 0], 0 below -2.
    return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))


def _elu(x):
    return torch.where(x >= 0, x, torch.expm1(x))


def _selu(x):
    return torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x))


def _gelu(x):
    return 0.5 * x * (1 + torch.tanh(0.797885 * x + 0.035677 * x.pow(3)))


def _loggy(x):
    return 2.0 / (1.0 + torch.exp(-x)) - 1.0


def _ramp(x):
    return x * (x > 0) + 0.1 * x


def _lhtan(x):
    return torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x))


def _hardtan(x):
    return torch.clamp(x, -1, 1)


def _plse(x):
    return torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5))


def _relie(x):
    return torch.where(x > 0, x, 0.01 * x)


# torch's own functions are reached through a lambda: this table is built without torch.
ACTIVATIONS: dict[str, Callable] = {
    "linear": lambda x: x,
    "leaky": _leaky,
    "logistic": lambda x: torch.sigmoid(x),
    "relu": lambda x: F.relu(x),
    "relu6": lambda x: torch.clamp(x, 0, 6),
    "mish": lambda x: F.mish(x),
    "swish": lambda x: F.silu(x),
    "hard_mish": _hard_mish,
    "tanh": lambda x: torch.tanh(x),
    "elu": _elu,
    "selu": _selu,
    "gelu": _gelu,
    "loggy": _loggy,
    "ramp": _ramp,
    "lhtan": _lhtan,
    "hardtan": _hardtan,
    "plse": _plse,
    "relie": _relie,
}


def activation_of(section: Section, index: int, default: str = "linear") -> str:
    """The ``activation=`` of a section, checked against the functions we implement."""
    name = section.get_str("activation", default)
    if name not in ACTIVATIONS:
        raise section.error(f"layer {index}: unknown activation '{name}': expected one of "
                            f"{', '.join(sorted(ACTIVATIONS))}", "activation")
    return name


def activate(name: str, x: torch.Tensor) -> torch.Tensor:
    return x if name == "linear" else ACTIVATIONS[name](x)


# In-place versions: one pass over memory instead of a read pass and a write to a new tensor.
_INPLACE: dict[str, Callable] = {
    "leaky": lambda x: F.leaky_relu_(x, 0.1),
    "logistic": lambda x: torch.sigmoid_(x),
    "relu": lambda x: torch.relu_(x),
    "tanh": lambda x: torch.tanh_(x),
}


def activate_(name: str, x: torch.Tensor) -> torch.Tensor:
    """``activate`` that may overwrite ``x``: only for a tensor the caller just created and
    that autograd does not need (inference)."""
    if name == "linear":
        return x
    f = _INPLACE.get(name)
    return f(x) if f is not None else ACTIVATIONS[name](x)


class ActivationModule(LayerModule):
    def __init__(self, spec: "ActivationSpec"):
        super().__init__(spec)
        self.activation = spec.activation

    def forward(self, x, outputs):
        return activate(self.activation, x)


@register("activation")
@dataclass(eq=False)
class ActivationSpec(LayerSpec):
    activation: str = "linear"

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext):
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.activation = activation_of(section, index)
        spec.out_shape = spec.in_shape
        return spec

    def describe(self) -> str:
        return self.activation

    def build(self):
        return ActivationModule(self)
