"""The CPU fast path of inference mode: a convolution whose (BatchNorm-folded) kernel is packed
once into oneDNN's blocked layout, with the activation fused into the same call.

``F.conv2d`` on CPU goes through oneDNN too, but reorders the kernel on every call and runs the
activation as a second pass over the output; for a 3×3 convolution with 512 → 1024 channels
at 13×13 the reorder alone is ~30 % of the call. Packing is done by the same private ops that
``torch.compile`` (inductor) uses for frozen CPU models; when they are missing (another torch
build, another device) :func:`pack_conv` returns None and the layer uses ``F.conv2d``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import torch

# Darknet activation → (oneDNN post-op, its scalars). Only those that give Darknet's values
# (checked against the torch functions in tests/test_fast_mode.py); the others run after the
# convolution as usual.
FUSED_ACTIVATIONS: dict[str, tuple[str, list[float]]] = {
    "linear": ("none", []),
    "leaky": ("leaky_relu", [0.1]),
    "relu": ("relu", []),
    "logistic": ("sigmoid", []),
    "tanh": ("tanh", []),
    "swish": ("swish", []),
}


def mkldnn_ops_available() -> bool:
    """Whether this torch build has the oneDNN ops the packed path needs."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise  # noqa: B018 (raises when absent)
        torch.ops.mkldnn._reorder_convolution_weight  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


_AVAILABLE = mkldnn_ops_available()


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand memory freed by the allocator back to the system (glibc's malloc_trim). Packing
    frees a folded kernel per layer; glibc keeps such blocks, and over a yolov3 they add up
    to ~0.7× the weights file in resident memory that nothing uses."""
    if _TRIM is not None:
        _TRIM(0)


@dataclass
class PackedConv:
    """A convolution (+ fused activation) ready to run on channels_last CPU tensors."""

    weight: torch.Tensor  # opaque oneDNN tensor
    bias: torch.Tensor
    padding: list[int]
    stride: list[int]
    dilation: list[int]
    groups: int
    attr: str
    scalars: list[float]
    fused: bool  # False: the activation still has to be applied after the call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x.contiguous(memory_format=torch.channels_last), self.weight, self.bias,
            self.padding, self.stride, self.dilation, self.groups, self.attr, self.scalars, "")


def pack_conv(weight: torch.Tensor, bias: torch.Tensor, stride: tuple[int, int], padding: int,
              dilation: int, groups: int, activation: str,
              in_shape: tuple[int, int, int]) -> PackedConv | None:
    """Pack ``weight`` (float32, CPU) for oneDNN; None when this build/device cannot."""
    if not _AVAILABLE or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    attr, scalars = FUSED_ACTIVATIONS.get(activation, ("none", []))
    pad, st, dil = [padding, padding], list(stride), [dilation, dilation]
    # from channels_last oneDNN reorders in one step; from NCHW it makes an intermediate copy
    source = weight.detach().contiguous(memory_format=torch.channels_last)
    try:
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            source, pad, st, dil, groups, [1, *in_shape])
    except RuntimeError:
        return None
    return PackedConv(packed, bias.detach().contiguous(), pad, st, dil, groups, attr, scalars,
                      activation in FUSED_ACTIVATIONS)
