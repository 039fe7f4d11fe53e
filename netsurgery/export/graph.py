"""A small ONNX graph builder: nodes, constants and names, nothing else.

Tensor and node names are derived from the Darknet layer being emitted (``L016/conv``), so an
export is deterministic: the same network and weights give the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from netsurgery.errors import NetsurgeryError

INSTALL_HINT = "pip install onnx onnxruntime   (or: pip install -e '.[onnx]')"


def require(module: str):
    """Import ``onnx`` or ``onnxruntime``, or say how to install them (exit 2 in the CLI)."""
    try:
        return __import__(module)
    except ImportError:
        raise NetsurgeryError(f"ONNX export and --runtime onnxruntime need the '{module}' "
                              f"package, which is not installed: {INSTALL_HINT}") from None


@dataclass
class OnnxGraph:
    """Nodes and initializers of one graph under construction. ``prefix`` names what is
    emitted next (the current layer); every name is unique and derived from it."""

    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    prefix: str = "g"
    shapes: list = field(default_factory=list)  # output Shape of every Darknet layer
    _used: dict[str, int] = field(default_factory=dict)
    _consts: dict[tuple, str] = field(default_factory=dict)

    def name(self, hint: str) -> str:
        base = f"{self.prefix}/{hint}"
        n = self._used.get(base, 0)
        self._used[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, value: Any, hint: str = "const", dtype=np.float32) -> str:
        """An initializer holding ``value``; small constants are shared by value."""
        from onnx import numpy_helper

        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = None
        if arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.name(hint) if arr.size > 16 else \
            f"const/{hint}_{len(self._consts)}"
        self.initializers.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values: Sequence[int], hint: str = "shape") -> str:
        """An int64 initializer (shapes, axes, slice bounds, pads)."""
        return self.const(list(values), hint, np.int64)

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None,
           **attrs) -> str:
        """Append one node with a single output and return the output's name."""
        from onnx import helper

        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def slice(self, x: str, axis: int, start: int, end: int, hint: str = "slice") -> str:
        return self.op("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])],
                       hint)

    def reshape(self, x: str, shape: Sequence[int], hint: str = "reshape") -> str:
        """Reshape; 0 copies the input's dimension (the batch, which may be symbolic)."""
        return self.op("Reshape", [x, self.ints(shape)], hint)

    def rename_output(self, old: str, new: str) -> bool:
        """Make the node producing ``old`` produce ``new`` (a graph output's public name).
        False when no node produces ``old`` (the graph input, or renamed before)."""
        producers = [n for n in self.nodes if old in n.output]
        if not producers:
            return False
        for node in self.nodes:
            for k, name in enumerate(node.input):
                if name == old:
                    node.input[k] = new
            for k, name in enumerate(node.output):
                if name == old:
                    node.output[k] = new
        return True
