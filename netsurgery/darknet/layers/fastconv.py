"""The CPU fast path of inference mode: a convolution whose (BatchNorm-folded) kernel is packed
once into oneDNN's blocked layout, with the activation fused into the same call.

``F.conv2d`` on CPU goes through oneDNN too, but reorders the kernel into oneDNN's layout on
every call and runs the activation as a second pass over the output (measured per layer in
docs/performance.md). Packing is done by the same private ops that ``torch.compile``
(inductor) uses for frozen CPU models; when they are missing (another torch build, another
device) :func:`pack_conv` returns None and the layer uses ``F.conv2d``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np
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
    """Hand memory the allocator holds but nothing uses back to the system (glibc's
    malloc_trim; a no-op elsewhere): after packing, the scratch buffers and the small blocks
    freed while folding."""
    if _TRIM is not None:
        _TRIM(0)


FOLD_SLICE = 1 << 18  # kernel values folded per float64 slice (2 MiB)


class FoldScratch:
    """Folds kernels layer after layer (packing a whole network) into reused buffers: the
    folded float32 kernel (channels_last, the layout oneDNN packs from without a copy) and a
    float64 slice. Without them every layer allocates and frees kernel-sized blocks: page
    faults that cost more than the arithmetic, and freed memory that malloc keeps. The
    arithmetic is numpy's, single-threaded: a few hundred short OpenMP regions would stall
    whenever another process holds a core (seconds instead of ~0.1 s for yolov3)."""

    def __init__(self, max_kernel: int):
        self._kernel = torch.empty(max(1, max_kernel))
        self._f64 = np.empty(FOLD_SLICE + 4096, dtype=np.float64)

    def kernel(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised (O, I, kh, kw) float32 tensor in channels_last layout."""
        o, i, kh, kw = shape
        n = o * i * kh * kw
        if n > self._kernel.numel():
            self._kernel = torch.empty(n)
        return self._kernel[:n].view(o, kh, kw, i).permute(0, 3, 1, 2)

    def fold(self, weights: torch.Tensor, biases: torch.Tensor, scales: torch.Tensor,
             mean: torch.Tensor, variance: torch.Tensor, eps: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Darknet's fuse_conv_batchnorm for CPU float32 tensors: factor = scale /
        sqrt(var + eps) and the products in float64, rounded once to float32 — the same bits
        as the float64 torch expression in ConvModule.fold. Returns (kernel in the scratch
        buffer, folded biases)."""
        src = weights.detach().numpy()
        var = variance.detach().numpy().astype(np.float64)
        scale = scales.detach().numpy().astype(np.float64)
        std = np.sqrt(var + eps)
        factor = scale / std
        bias = (biases.detach().numpy().astype(np.float64)
                - scale * mean.detach().numpy().astype(np.float64) / std)
        out = self.kernel(tuple(src.shape))
        dst = out.permute(0, 2, 3, 1).numpy()  # (O, kh, kw, I), contiguous
        o = src.shape[0]
        per_filter = max(1, src[0].size)
        step = max(1, FOLD_SLICE // per_filter)
        if step * per_filter > self._f64.size:
            self._f64 = np.empty(step * per_filter, dtype=np.float64)
        for a in range(0, o, step):
            part = src[a:a + step].transpose(0, 2, 3, 1)
            tmp = self._f64[:part.size].reshape(part.shape)
            np.multiply(part, factor[a:a + step, None, None, None], out=tmp)
            dst[a:a + step] = tmp  # float64 → float32, round to nearest
        return out, torch.from_numpy(bias.astype(np.float32))


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
