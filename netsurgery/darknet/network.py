"""A parsed network: cfg sections turned into layer specs with shapes (Darknet's rules)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from netsurgery.errors import CfgError

from .cfg import Cfg, load_cfg
from .layers import BuildContext, LayerSpec, NetInput, Shape
from .layers.base import spec_class


@dataclass
class Network:
    """A cfg with every layer parsed and its shapes inferred at ``net`` input size."""

    cfg: Cfg
    net: NetInput
    layers: list[LayerSpec]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> LayerSpec:
        return self.layers[index]

    @property
    def path(self) -> str | None:
        return self.cfg.path

    def heads(self) -> list[int]:
        """Indices of the detection layers ([yolo], [region] ...: ``spec.is_detection``)."""
        return [s.index for s in self.layers if s.is_detection]

    def outputs(self) -> list[int]:
        """Layers whose output the model returns: the heads, else the last layer."""
        return self.heads() or [len(self.layers) - 1]

    def consumers(self) -> dict[int, list[int]]:
        """For each layer, the later layers that read it."""
        users: dict[int, list[int]] = {i: [] for i in range(len(self.layers))}
        for spec in self.layers:
            for src in spec.inputs():
                if src >= 0:
                    users[src].append(spec.index)
        return users

    @property
    def params(self) -> int:
        return sum(s.params for s in self.layers)

    @property
    def flops(self) -> float:
        return sum(s.flops() for s in self.layers)


def net_input(cfg: Cfg, size: tuple[int, int] | None = None) -> NetInput:
    """Input size from ``[net]`` (width, height, channels), or ``size`` = (width, height)."""
    net = cfg.net
    width = net.get_int("width", 0)
    height = net.get_int("height", 0)
    channels = net.get_int("channels", 0)
    if size is not None:
        width, height = size
    if net.has("inputs") and not (width and height and channels):
        width, height, channels = 1, 1, net.get_int("inputs")
    for key, value in (("width", width), ("height", height), ("channels", channels)):
        if value <= 0:
            raise net.error(f"{key}={value}: expected a positive {key} (or inputs=)", key)
    return NetInput(width, height, channels, net.get_int("batch", 1))


def build_network(cfg: Cfg | str | os.PathLike, size: tuple[int, int] | None = None,
                  strict: bool | None = None) -> Network:
    """Parse every layer of ``cfg`` and infer its shapes; errors name ``file:line``.
    What Darknet accepts but probably is a mistake (a key it does not read, surplus anchors)
    is a warning in ``cfg.warnings``, or an error with ``strict`` (default: the cfg's own
    ``strict``, as it was read; for a path, see :func:`~netsurgery.darknet.cfg.load_cfg`)."""
    if not isinstance(cfg, Cfg):
        cfg = load_cfg(cfg, strict)
    elif strict is not None and strict != cfg.strict:
        cfg = cfg.copy()
        cfg.strict = strict
        if strict and cfg.issues:  # read leniently, asked strictly: the first one stops
            raise cfg.issues[0]
    time_steps = max(1, cfg.net.get_int("time_steps", 1))
    ctx = BuildContext(net_input(cfg, size), [], cfg.path, cfg, time_steps)
    if not cfg.layers:
        raise CfgError(cfg.path, cfg.net.line, "no layers after [net]")
    for index, section in enumerate(cfg.layers):
        cls = spec_class(section, index)
        try:
            spec = cls.parse(index, section, ctx)
        except CfgError as exc:
            own = net_input(cfg)
            if size is None or (own.width, own.height) == tuple(size):
                raise
            # the cfg is fine at its own size: say which size broke it
            raise CfgError(exc.path, exc.line, f"{exc.message} (with the input at "
                           f"{size[0]}x{size[1]}, not the cfg's {own.width}x{own.height}; "
                           "YOLO networks need multiples of 32)") from None
        ctx.specs.append(spec)
    return Network(cfg, ctx.net, ctx.specs)


__all__ = ["Network", "build_network", "net_input", "Shape"]
