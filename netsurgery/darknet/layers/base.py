"""What every layer type knows: how to read its section, its shape rule, the layers it names
(and how to renumber them), whether it is a detection head, the arrays it keeps in a .weights
file (in file order, and their layout there), its cost, and how to build its torch module.

torch is imported only when a model is built: parsing, shapes, costs, weights files and
surgery run without it (``netsurgery info`` starts in a fraction of the time). Layer files
therefore bind ``torch``, ``nn`` and ``F`` through :func:`lazy_torch` and derive their modules
from :class:`LayerModule`, which becomes an ``nn.Module`` when first instantiated."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np

from netsurgery.darknet.cfg import Cfg, Section
from netsurgery.errors import CfgError


@dataclass(frozen=True)
class Shape:
    """A layer output (channels, height, width) for one image."""

    c: int
    h: int
    w: int

    @property
    def numel(self) -> int:
        return self.c * self.h * self.w

    def as_list(self) -> list[int]:
        return [self.c, self.h, self.w]

    def __str__(self) -> str:
        return f"{self.c}x{self.h}x{self.w}"


@dataclass
class NetInput:
    """The network's input as ``[net]`` declares it (or as overridden by ``size``)."""

    width: int
    height: int
    channels: int
    batch: int = 1

    @property
    def shape(self) -> Shape:
        return Shape(self.channels, self.height, self.width)


@dataclass
class WeightArray:
    """One array a layer stores in .weights: its name, shape and place in file order."""

    name: str
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class ReferenceKey:
    """An option that names other layers, by Darknet's rule: a negative value counts back from
    the layer, any other is an absolute index. ``many``: a comma list ([route] layers), else
    one index. ``none``: a value that names no layer ([contrastive] yolo_layer=0)."""

    key: str
    many: bool = False
    none: int | None = None


@dataclass
class LayerSpec:
    """Parsed, shape-checked description of one layer. Subclasses add typed options."""

    index: int
    section: Section
    in_shape: Shape  # the previous layer's output (the network input for layer 0)
    out_shape: Shape = field(init=False)

    type_name: ClassVar[str] = ""
    reference_keys: ClassVar[tuple[ReferenceKey, ...]] = ()  # options naming other layers
    # Detection heads ([yolo], [region]) set this and have ``classes`` (int) and ``anchors``
    # (flat w,h pairs, all the section declares) fields.
    is_detection: ClassVar[bool] = False
    # The arrays Darknet's update applies weight decay to (its update_*_layer)
    decayed_arrays: ClassVar[tuple[str, ...]] = ()

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def parse(cls, index: int, section: Section, ctx: "BuildContext") -> "LayerSpec":
        raise NotImplementedError

    # -- facts ----------------------------------------------------------------------------
    def sources(self) -> list[int]:
        """Absolute indices of earlier layers this layer reads besides its input (index-1)."""
        return []

    def reads_previous(self) -> bool:
        """Whether the layer consumes the previous layer's output (route does not)."""
        return True

    def inputs(self) -> list[int]:
        """Every layer index read (``-1`` = the network input)."""
        prev = [self.index - 1] if self.reads_previous() else []
        return prev + self.sources()

    # -- references -----------------------------------------------------------------------
    @classmethod
    def references_in(cls, section: Section, index: int) -> dict[str, list[int]]:
        """For each reference option of ``section`` placed at ``index``: the absolute indices
        it names (as written, unchecked: also for a section that is not parsed yet)."""
        out = {}
        for ref in cls.reference_keys:
            if section.has(ref.key):
                raw = section.get_ints(ref.key) if ref.many else [section.get_int(ref.key)]
                out[ref.key] = [index + r if r < 0 else r for r in raw if r != ref.none]
        return out

    def references(self) -> list[int]:
        """Absolute indices of every layer this layer names in its options: the layers it
        reads besides its input, and layers it uses otherwise (a shared kernel ...)."""
        return [t for targets in self.references_in(self.section, self.index).values()
                for t in targets]

    @classmethod
    def renumber_section(cls, section: Section, old_index: int, new_index: int,
                         mapping: Callable[[int], int | None]) -> Section:
        """A copy of ``section`` moved from ``old_index`` to ``new_index``, each named layer
        ``t`` replaced by ``mapping(t)`` (None: the layer is gone, an error naming both).
        Relative values stay relative; values naming no layer stay as they are."""
        out = section.copy()
        for ref in cls.reference_keys:
            if not section.has(ref.key):
                continue
            raw = section.get_ints(ref.key) if ref.many else [section.get_int(ref.key)]
            new_values = [r if r == ref.none else
                          _renumbered_value(section, ref.key, r, old_index, new_index, mapping)
                          for r in raw]
            if new_values != raw:
                out.set(ref.key, new_values if ref.many else new_values[0])
        return out

    def renumbered(self, new_index: int, mapping: Callable[[int], int | None]) -> Section:
        """This layer's section moved to ``new_index`` with its references mapped (see
        :meth:`renumber_section`)."""
        return self.renumber_section(self.section, self.index, new_index, mapping)

    def input_channels(self) -> tuple[int, str] | None:
        """A detection head: the channels the layer before it must output, and the rule
        written out for messages (``(classes+5)·len(mask) = ...``); None for other layers."""
        return None

    def decoder(self, name: str | None = None) -> tuple | None:
        """A detection head: (what decoding needs, the decode function of
        :mod:`netsurgery.detection.decode`, the layer whose output it decodes)."""
        return None

    # -- weights --------------------------------------------------------------------------
    def weight_arrays(self, transposed: bool = False) -> list[WeightArray]:
        """Arrays in .weights file order; empty for layers without weights. ``transposed``:
        the shapes as a file whose header says so stores them."""
        return []

    def initial_array(self, array: WeightArray, rng: np.random.Generator) -> np.ndarray:
        """Darknet's initial value (its make_*_layer) of one of this layer's arrays, before the
        cast to float32: BatchNorm scales and rolling variance 1, biases and rolling mean 0,
        and ``weights`` 1 (a [shortcut]'s per-input weights: a plain sum). Types with a
        trained kernel ([convolutional], [connected]) draw their ``weights`` from ``rng``."""
        if array.name in ("weights", "scales", "rolling_variance"):
            return np.ones(array.shape)
        return np.zeros(array.shape)

    def to_module_layout(self, name: str, array: np.ndarray, transposed: bool) -> np.ndarray:
        """Array ``name`` as a .weights file stores it (``transposed``: its header's flag) in
        the layout of the torch module and of ``weight_arrays()``; ``array`` itself when the
        two layouts agree."""
        return array

    def to_file_layout(self, name: str, array: np.ndarray, transposed: bool) -> np.ndarray:
        """The inverse of :meth:`to_module_layout`."""
        return array

    @property
    def params(self) -> int:
        return sum(a.count for a in self.weight_arrays())

    def flops(self) -> float:
        """Floating point operations as Darknet counts them (its BFLOPS × 1e9)."""
        return 0.0

    def describe(self) -> str:
        """Key options for a layer table."""
        return ""

    def build(self) -> "LayerModule":
        raise CfgError(self.section.path, self.section.line,
                       f"layer {self.index} [{self.section.header}]: not supported by "
                       "netsurgery's PyTorch model (cfg, shapes and weights still work)")

    def error(self, message: str, key: str | None = None) -> CfgError:
        return self.section.error(f"layer {self.index}: {message}", key)


@dataclass
class BuildContext:
    """What a layer may look at while it is parsed: the net input and earlier layers."""

    net: NetInput
    specs: list[LayerSpec]
    path: str | None = None
    cfg: Cfg | None = None  # where warnings go (None: they are errors)
    time_steps: int = 1  # [net] time_steps: the recurrent layers' sequence length

    def warn(self, section: Section, message: str, key: str | None = None) -> None:
        """Something Darknet accepts (surplus anchors ...): a warning, or with a strict cfg a
        CfgError (see :meth:`Cfg.warn`)."""
        if self.cfg is None:
            raise section.error(message, key)
        self.cfg.warn(section, message, key)

    def shape_of(self, index: int) -> Shape:
        return self.net.shape if index < 0 else self.specs[index].out_shape

    def resolve(self, section: Section, index: int, key: str, ref: int) -> int:
        """Darknet reference rule: negative = relative to this layer, else absolute. Must
        point at an earlier layer."""
        absolute = index + ref if ref < 0 else ref
        if absolute < 0 or absolute >= index:
            earlier = f"(0..{index - 1})" if index else "(layer 0 has none: it reads the input)"
            raise section.error(
                f"layer {index}: {key}={ref} points at layer {absolute}: expected an earlier "
                f"layer {earlier}", key)
        return absolute


class LazyImport:
    """Stands for a module until its first attribute is read; then imports it and puts it in
    its own place in ``namespace``, so that later uses cost nothing."""

    def __init__(self, module: str, namespace: dict, name: str):
        self._module, self._namespace, self._name = module, namespace, name

    def __getattr__(self, attr: str):
        module = importlib.import_module(self._module)
        self._namespace[self._name] = module
        return getattr(module, attr)


def lazy_torch(namespace: dict) -> tuple[LazyImport, LazyImport, LazyImport]:
    """``torch, nn, F = lazy_torch(globals())``: torch, torch.nn and torch.nn.functional,
    imported when a layer module first uses them (that is, when a model is built)."""
    return (LazyImport("torch", namespace, "torch"), LazyImport("torch.nn", namespace, "nn"),
            LazyImport("torch.nn.functional", namespace, "F"))


torch, nn, F = lazy_torch(globals())


class _TorchOnFirstUse(type):
    """Metaclass of :class:`LayerModule`: a module class is written as usual but defined
    without torch; creating its first instance makes the real class, the same class with
    ``nn.Module`` added as a base (same name, same methods: no cost per call)."""

    def __call__(cls, *args, **kwargs):
        real = cls.__dict__.get("_torch_class")
        if real is None:
            if cls.__dict__.get("_is_torch_class"):
                return super().__call__(*args, **kwargs)
            import torch.nn

            real = type(cls)(cls.__name__, (cls, torch.nn.Module),
                             {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                              "__doc__": cls.__doc__, "_is_torch_class": True})
            cls._torch_class = real
        return real(*args, **kwargs)


class LayerModule(metaclass=_TorchOnFirstUse):
    """A torch module for one Darknet layer. ``forward(x, outputs)`` gets the previous output
    and the list of all earlier outputs (for route/shortcut style layers). Instances are
    ``nn.Module`` s (see :class:`_TorchOnFirstUse`).

    For inference the model may call an optional ``forward_(x, outputs)`` instead, which is
    allowed to overwrite ``x``: only when no later layer reads ``x`` and the layer that made
    ``x`` declares ``fresh_output`` (its outputs never share memory with another output)."""

    fresh_output = False

    def __init__(self, spec: LayerSpec):
        super().__init__()  # nn.Module's
        self.index = spec.index
        self.sources = spec.sources()

    def forward(self, x, outputs: list):  # pragma: no cover
        raise NotImplementedError

    # Parameters in .weights file order as (name, tensor); modules with weights override.
    def weight_tensors(self) -> list[tuple]:
        return []

    def resize(self, spec: LayerSpec) -> None:
        """Take the shapes of ``spec``: this layer in the network built for another input size
        (Darknet's resize_network). Weights stay; modules that keep something derived from the
        spatial size (output crop, pool padding, gather index) override this."""


def lazy_zeros(*shape: int):
    """A float32 tensor of zeros whose memory is not written until used. numpy's zeros come
    from calloc, which for large blocks maps fresh zero pages, where ``torch.zeros`` writes
    every byte: a model built for a weights file then writes its kernels once (the file
    read), not twice — for yolov3 that is 70 ms of 130."""
    return torch.from_numpy(np.zeros(shape, dtype=np.float32))


REGISTRY: dict[str, type[LayerSpec]] = {}


def register(*names: str):
    """Class decorator: the spec class handles these canonical section names."""

    def deco(cls: type[LayerSpec]) -> type[LayerSpec]:
        for name in names:
            REGISTRY[name] = cls
        cls.type_name = names[0]
        return cls

    return deco


def spec_class(section: Section, index: int) -> type[LayerSpec]:
    """The spec class of ``section`` (layer ``index``); a CfgError naming it if there is
    none."""
    cls = REGISTRY.get(section.type)
    if cls is None:
        raise CfgError(section.path, section.line,
                       f"layer {index} [{section.header}]: this layer type is read by Darknet "
                       "but not supported by netsurgery")
    return cls


def _renumbered_value(section: Section, key: str, value: int, old_index: int, new_index: int,
                      mapping: Callable[[int], int | None]) -> int:
    target = old_index + value if value < 0 else value
    new_target = mapping(target)
    if new_target is None:
        raise section.error(f"layer {old_index}: {key} refers to layer {target}, which is not "
                            "part of the result", key)
    if new_target >= new_index:
        raise section.error(f"layer {old_index}: {key} would refer to layer {new_target} at or "
                            f"after its new position {new_index}", key)
    return new_target - new_index if value < 0 else new_target


def positive(section: Section, index: int, key: str, value: int, minimum: int = 1) -> int:
    """Reject values Darknet would take but that are nonsense (filters=0, stride=0 ...)."""
    if value < minimum:
        raise section.error(f"layer {index}: {key}={value}: expected an integer ≥ {minimum}", key)
    return value
