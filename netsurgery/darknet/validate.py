"""Consistency checks on a whole network, beyond what parsing one section can see.

``build_network`` already rejects most mistakes in a cfg file; these checks matter for
networks edited or assembled in code (surgery, merging), whose specs can go stale, and they
add warnings about things Darknet accepts but that are probably not meant: a [shortcut] adding
layers of different shapes, a layer reading a [yolo] output, a layer nobody reads.
"""
from __future__ import annotations

from dataclasses import dataclass

from netsurgery.errors import CfgError

from .layers import LayerSpec, RouteSpec, Shape, ShortcutSpec, YoloSpec
from .network import Network

ERROR = "error"
WARNING = "warning"


@dataclass
class Problem:
    """One finding. ``line`` is the cfg line to look at (the key's line when known)."""

    index: int | None
    line: int | None
    message: str
    severity: str = ERROR
    path: str | None = None

    def __str__(self) -> str:
        where = f"{self.path or '<cfg>'}:{self.line}" if self.line is not None else \
            f"{self.path or '<cfg>'}"
        layer = f"layer {self.index}: " if self.index is not None else ""
        return f"{where}: {self.severity}: {layer}{self.message}"


class _Checker:
    def __init__(self, network: Network):
        self.network = network
        self.layers = network.layers
        self.problems: list[Problem] = []

    # -- helpers --------------------------------------------------------------------------
    def add(self, spec: LayerSpec, message: str, key: str | None = None,
            severity: str = ERROR) -> None:
        opt = spec.section.find(key) if key else None
        line = opt.line if opt is not None and opt.line is not None else spec.section.line
        self.problems.append(Problem(spec.index, line, message, severity,
                                     spec.section.path or self.network.path))

    def shape_of(self, index: int) -> Shape:
        return self.network.net.shape if index < 0 else self.layers[index].out_shape

    def valid_sources(self, spec: LayerSpec) -> list[int]:
        return [s for s in spec.sources() if 0 <= s < spec.index]

    # -- checks ---------------------------------------------------------------------------
    def run(self) -> list[Problem]:
        for position, spec in enumerate(self.layers):
            if spec.index != position:
                self.add(spec, f"spec says index {spec.index} but it is layer {position} of "
                               "the network (renumber after inserting or removing layers)")
                continue
            self.references(spec)
            self.input_shape(spec)
            if isinstance(spec, ShortcutSpec):
                self.shortcut(spec)
            elif isinstance(spec, RouteSpec):
                self.route(spec)
            elif isinstance(spec, YoloSpec):
                self.yolo(spec)
            if spec.is_detection:
                self.head(spec)
            self.after_head(spec)
        self.unused()
        return self.problems

    def references(self, spec: LayerSpec) -> None:
        key = spec.reference_keys[0].key if spec.reference_keys else None
        for src in spec.sources():
            if not 0 <= src < spec.index:
                self.add(spec, f"reads layer {src}: expected an earlier layer "
                               f"(0..{spec.index - 1})", key)

    def input_shape(self, spec: LayerSpec) -> None:
        prev = self.shape_of(spec.index - 1)
        if spec.in_shape != prev:
            what = "the network input" if spec.index == 0 else f"layer {spec.index - 1}"
            self.add(spec, f"input shape {spec.in_shape} but {what} outputs {prev} (stale "
                           "shapes: rebuild the network after editing it)")

    def shortcut(self, spec: ShortcutSpec) -> None:
        for src in self.valid_sources(spec):
            shape = self.shape_of(src)
            if shape != spec.in_shape:
                n = min(shape.numel, spec.in_shape.numel)
                self.add(spec, f"from layer {src} is {shape} but the previous layer is "
                               f"{spec.in_shape}: Darknet adds only the first {n} values of "
                               "the flattened outputs", "from", WARNING)

    def route(self, spec: RouteSpec) -> None:
        sources = self.valid_sources(spec)
        if not sources:
            if not spec.sources():
                self.add(spec, "reads no layer: expected layers=", "layers")
            return
        shapes = [self.shape_of(i) for i in sources]
        first = shapes[0]
        for i, s in zip(sources, shapes):
            if (s.h, s.w) != (first.h, first.w):
                self.add(spec, f"layer {i} is {s.h}x{s.w} but layer {sources[0]} is "
                               f"{first.h}x{first.w}: route concatenates equal sizes only",
                         "layers")
            if spec.groups > 0 and s.c % spec.groups:
                self.add(spec, f"groups={spec.groups} does not divide the {s.c} channels of "
                               f"layer {i}", "groups")
        if len(sources) == len(spec.sources()) and spec.groups > 0:
            want = Shape(sum(s.c for s in shapes) // spec.groups, first.h, first.w)
            if spec.out_shape != want:
                self.add(spec, f"output shape {spec.out_shape} but its inputs make {want}")

    def yolo(self, spec: YoloSpec) -> None:
        for m in spec.mask:
            if not 0 <= m < spec.total:
                self.add(spec, f"mask index {m} is outside 0..{spec.total - 1} (num="
                               f"{spec.total})", "mask")

    def head(self, spec: LayerSpec) -> None:
        expected, rule = spec.input_channels()
        channels = self.shape_of(spec.index - 1).c
        if channels != expected:
            target = self.layers[spec.index - 1] if spec.index > 0 else spec
            self.add(target, f"filters={channels} does not fit the [{spec.section.header}] "
                             f"layer {spec.index} after it: expected {rule}", "filters")

    def after_head(self, spec: LayerSpec) -> None:
        if spec.index == 0 or not spec.reads_previous():
            return
        prev = self.layers[spec.index - 1]
        if prev.is_detection:
            self.add(spec, f"reads the output of the [{prev.section.header}] layer "
                           f"{prev.index} (partly activated detections); a [route] "
                           "usually follows a head", severity=WARNING)

    def unused(self) -> None:
        read: set[int] = set()
        for spec in self.layers:
            read.update(i for i in spec.inputs() if 0 <= i < spec.index)
        outputs = set(self.network.outputs())
        for spec in self.layers:
            if spec.index not in read and spec.index not in outputs:
                self.add(spec, "output is never read and the layer is not a detection head "
                               "(dead layer: wasted FLOPs)", severity=WARNING)


def validate_network(network: Network) -> list[Problem]:
    """Every consistency problem found, errors and warnings, in layer order (the unused-layer
    warnings last)."""
    return _Checker(network).run()


def check_network(network: Network, warnings_are_errors: bool = False) -> list[Problem]:
    """Raise the first error (or the first problem of any kind with
    ``warnings_are_errors``) as a :class:`CfgError` located at its line; return the warnings
    otherwise."""
    problems = validate_network(network)
    for p in problems:
        if p.severity == ERROR or warnings_are_errors:
            layer = f"layer {p.index}: " if p.index is not None else ""
            raise CfgError(p.path, p.line, f"{layer}{p.message}")
    return problems


__all__ = ["Problem", "validate_network", "check_network", "ERROR", "WARNING"]
