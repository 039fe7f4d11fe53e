"""A PyTorch model built from a Darknet network, with Darknet's inference semantics.

Every layer is one module from :mod:`netsurgery.darknet.layers`; :class:`DarknetModel` runs them in
Darknet order with an execution plan that keeps each output only while a later layer still
needs it, and that runs only the layers a requested output depends on (a merged network's
single head, or a trunk computed once and reused).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from netsurgery.errors import NetsurgeryError

from .cfg import Cfg
from .layers.fastconv import FoldScratch, release_free_memory
from .memory import check_fits
from .network import Network, build_network
from .weights import WeightsFile, WeightsHeader, read_arrays_into
from .weights import load_weights as read_weights_file
from .weights import save_weights as write_weights_file


@dataclass(frozen=True)
class ExecutionPlan:
    """Which layers to run for some targets, and after which step each output can go."""

    order: tuple[int, ...]
    release_after: dict  # step position -> layer indices whose output is no longer needed
    targets: tuple[int, ...]
    # step positions whose layer may overwrite its input (dead after it, a fresh tensor)
    reuse_input: frozenset = frozenset()


class DarknetModel(nn.Module):
    """Darknet network as a torch module. ``model(x)`` returns the head outputs (the [yolo] /
    [region] layers, or the last layer) as Darknet leaves them; ``model.layer_outputs(x)``
    returns every layer's output, index = Darknet layer index."""

    def __init__(self, network: Network):
        super().__init__()
        self.network = network
        self.layers = nn.ModuleList(spec.build() for spec in network.layers)
        self.header = WeightsHeader()
        self.weights_notes: list[str] = []
        self._plans: dict[tuple[tuple[int, ...], tuple[int, ...]], ExecutionPlan] = {}
        self._inputs = [spec.inputs() for spec in network.layers]
        self._fast = False  # set by inference(): packed kernels, channels_last on CPU
        self._pool_kernels()

    def _pool_kernels(self) -> None:
        """Give every large kernel a slice of one zero-filled block instead of its own. numpy
        asks the kernel for huge pages for blocks ≥ 4 MiB, so the first write — reading the
        .weights file — faults 2 MiB pages, not 4 KiB ones: reading yolov3's 236 MiB into
        75 separate kernels takes 2-3× as long as ``numpy.fromfile`` of the file, into one
        block the same. The block is calloc'd: untouched pages cost nothing."""
        big = [m for m in self.layers if isinstance(getattr(m, "weights", None), nn.Parameter)
               and m.weights.dtype == torch.float32 and m.weights.device.type == "cpu"
               and m.weights.numel() >= 1 << 14]
        if len(big) < 2:
            return
        align = 16  # floats: every kernel starts on a 64-byte boundary
        sizes = [-(-m.weights.numel() // align) * align for m in big]
        block = torch.from_numpy(np.zeros(sum(sizes) + align, dtype=np.float32))
        offset = (-block.data_ptr() // 4) % align
        for m, size in zip(big, sizes):
            old = m.weights
            m.weights = nn.Parameter(block[offset:offset + old.numel()].view(old.shape),
                                     requires_grad=old.requires_grad)
            offset += size

    # -- structure ------------------------------------------------------------------------
    @property
    def cfg(self) -> Cfg:
        return self.network.cfg

    def __len__(self) -> int:
        return len(self.layers)

    def output_layers(self) -> list[int]:
        return self.network.outputs()

    def plan(self, targets: Sequence[int], have: Iterable[int] = ()) -> ExecutionPlan:
        """The layers needed for ``targets`` given outputs already available in ``have``."""
        have_t = tuple(sorted(set(have)))
        key = (tuple(targets), have_t)
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        needed: set[int] = set()
        stack = [t for t in targets if t not in have_t]
        while stack:
            i = stack.pop()
            if i in needed or i < 0:
                continue
            needed.add(i)
            stack.extend(j for j in self._inputs[i] if j not in have_t)
        order = tuple(sorted(needed))
        last_use: dict[int, int] = {}
        for pos, i in enumerate(order):
            for j in self._inputs[i]:
                last_use[j] = pos
        keep = set(targets)
        release: dict[int, list[int]] = {}
        for j, pos in last_use.items():
            if j >= 0 and j not in keep and j in needed:
                release.setdefault(pos, []).append(j)
        for pos, i in enumerate(order):  # outputs nobody reads (and not asked for)
            if i not in last_use and i not in keep:
                release.setdefault(pos, []).append(i)
        reuse = frozenset(
            pos for pos, i in enumerate(order)
            if i > 0 and (i - 1) in release.get(pos, ()) and hasattr(self.layers[i], "forward_")
            and self.layers[i - 1].fresh_output)
        plan = ExecutionPlan(order, release, tuple(targets), reuse)
        self._plans[key] = plan
        return plan

    def resize(self, width: int, height: int) -> "DarknetModel":
        """Run at another input size with the same weights, as Darknet's resize_network does
        for multi-scale training or ``-width``/``-height``: shapes are inferred again and the
        layers adopt them; parameters are not copied. The cfg is left as it is. Refused with
        the layer named when a layer's weights depend on the size ([connected], weighted
        [local] ...) or the input becomes too small."""
        net = self.network.net
        if (width, height) == (net.width, net.height):
            return self
        network = build_network(self.network.cfg, size=(width, height))
        for old, new in zip(self.network.layers, network.layers):
            if [a.shape for a in old.weight_arrays()] != [a.shape for a in new.weight_arrays()]:
                raise NetsurgeryError(
                    f"{self.network.path}: layer {old.index} [{old.section.header}] has weights "
                    f"for a {net.width}x{net.height} input; it cannot run at {width}x{height}")
        for new, module in zip(network.layers, self.layers):
            module.resize(new)
        self.network = network
        return self

    # -- running --------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        want = self.network.net.shape
        if x.dim() != 4 or tuple(x.shape[1:]) != (want.c, want.h, want.w):
            raise NetsurgeryError(
                f"input of shape {tuple(x.shape)}: expected (batch, {want.c}, {want.h}, "
                f"{want.w}) for {self.network.path} (rebuild with size= for another size)")

    def run(self, x: torch.Tensor, targets: Sequence[int],
            cache: dict[int, torch.Tensor] | None = None,
            native: Collection[int] = ()) -> dict[int, torch.Tensor]:
        """Outputs of ``targets`` (layer indices), computing only what they depend on.

        ``cache`` maps layer index → an output computed before for the same input (e.g. the
        shared trunk of a merged network); it is used and not recomputed. Outputs of the
        layers in ``native`` are returned in the model's internal memory layout (channels-last
        in the fast mode): for outputs only passed back as a ``cache``."""
        self._check_input(x)
        cache = cache or {}
        plan = self.plan(targets, cache.keys())
        fmt = self._memory_format(x)
        outputs: list = [None] * len(self.layers)
        for i, t in cache.items():
            outputs[i] = t if fmt is None else t.contiguous(memory_format=fmt)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        # a plain list: ModuleList indexing costs microseconds per call, like a small layer
        layers, inputs, release = list(self.layers), self._inputs, plan.release_after
        # overwriting dead inputs is for inference (no autograd, or the fast mode, whose
        # parameters need no gradient; forward_ itself declines tensors that need one)
        reuse = plan.reuse_input if self._fast or not torch.is_grad_enabled() else ()
        for pos, i in enumerate(plan.order):
            reads = inputs[i]
            prev = x if i == 0 else outputs[i - 1] if reads and reads[0] == i - 1 else None
            if pos in reuse:
                outputs[i] = layers[i].forward_(prev, outputs)
            else:
                outputs[i] = layers[i](prev, outputs)
            for j in release.get(pos, ()):
                if j not in cache:
                    outputs[j] = None
        if fmt is None:
            return {t: outputs[t] for t in targets}
        # callers may .view() them; ``native`` ones stay in the model's layout (fed back as a
        # cache they need no conversion either way)
        return {t: outputs[t] if t in native else outputs[t].contiguous() for t in targets}

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output, index = Darknet layer index."""
        self._check_input(x)
        fmt = self._memory_format(x)
        outputs: list = []
        prev = x if fmt is None else x.contiguous(memory_format=fmt)
        for module in self.layers:
            prev = module(prev, outputs)
            outputs.append(prev)
        return outputs if fmt is None else [o.contiguous() for o in outputs]

    def _memory_format(self, x: torch.Tensor) -> torch.memory_format | None:
        """channels_last in the CPU fast path: oneDNN's native layout (no reorders around each
        convolution) and ~10× faster max pooling than NCHW; None = leave tensors as given."""
        return torch.channels_last if self._fast and x.device.type == "cpu" else None

    def forward(self, x: torch.Tensor, targets: Sequence[int] | None = None):
        """Head outputs (list, in layer order) — or the outputs of ``targets``."""
        targets = list(targets) if targets is not None else self.output_layers()
        out = self.run(x, targets)
        return [out[t] for t in targets]

    # -- inference mode -------------------------------------------------------------------
    def fold_batchnorm(self) -> "DarknetModel":
        """Fold BatchNorm into the convolutions for inference (Darknet's fuse, in float64).
        The unfolded parameters stay for training and for saving. The fold is a snapshot:
        after changing weights in eval mode, fold again (``load_weights`` does); in the fast
        mode this packs the kernels again."""
        if self._fast:
            self._pack()
            return self
        for m in self.layers:
            if hasattr(m, "fold"):
                m.fold()
        return self

    def unfold_batchnorm(self) -> "DarknetModel":
        """Drop the folded copies: eval mode computes BatchNorm from the parameters again."""
        for m in self.layers:
            if hasattr(m, "unfold"):
                m.unfold()
        return self

    def train(self, mode: bool = True) -> "DarknetModel":
        """Training mode also drops the folded BatchNorm copies: weights changed while training
        must not be shadowed by a stale fold when the model goes back to eval mode."""
        if mode:
            self.unfold_batchnorm()
            self._fast = False
        return super().train(mode)

    def inference(self, fast: bool = True) -> "DarknetModel":
        """Switch to the inference mode: eval, BatchNorm folded (Darknet's float64 fuse), no
        autograd. ``fast`` (default) also packs the convolution kernels for oneDNN with the
        activation fused and runs CPU tensors channels_last (see docs/performance.md); results
        equal the plain path within float32 rounding. ``fast=False``: folded BatchNorm only."""
        self.eval()
        self.requires_grad_(False)
        self._fast = fast
        self.unfold_batchnorm()
        self.fold_batchnorm()  # fast: fold and pack layer by layer (see _pack)
        return self

    @property
    def fast(self) -> bool:
        """Whether the fast inference path is on (see :meth:`inference`)."""
        return self._fast

    def _pack(self) -> None:
        """Fold and pack every convolution (the fast path's kernels)."""
        convs = [m for m in self.layers if hasattr(m, "pack")]
        # one set of buffers for every CPU float32 layer's folded kernel: no per-layer
        # allocations (other devices and dtypes fold into their own tensors)
        cpu32 = {id(m) for m in convs
                 if m.weights.device.type == "cpu" and m.weights.dtype == torch.float32}
        scratch = FoldScratch(max(m.weights.numel() for m in convs if id(m) in cpu32)) \
            if cpu32 else None
        for m in convs:
            m.pack(scratch if id(m) in cpu32 else None)
        if scratch is not None:
            del scratch
            release_free_memory()

    # -- weights --------------------------------------------------------------------------
    def weight_tensors(self, index: int) -> list[tuple[str, torch.Tensor]]:
        return self.layers[index].weight_tensors()

    def load_weights(self, source: str | os.PathLike | WeightsFile) -> WeightsFile:
        """Copy a .weights file (or an already read one) into the parameters."""
        wf = source if isinstance(source, WeightsFile) else \
            read_weights_file(source, self.network.layers)
        direct: dict[int, dict[str, np.ndarray]] = {}  # parameters the file is read into
        with torch.no_grad():
            for index, lw in wf.layers.items():
                tensors = dict(self.layers[index].weight_tensors())
                spec = self.network.layers[index]
                for name, stored in lw.arrays.items():
                    target = tensors[name]
                    arr = spec.to_module_layout(name, stored, wf.header.transposed)
                    if arr is stored and target.device.type == "cpu" and \
                            target.dtype == torch.float32 and target.is_contiguous() and \
                            target.numel() == arr.size:
                        direct.setdefault(index, {})[name] = target.detach().numpy()
                        continue
                    target.copy_(torch.from_numpy(np.ascontiguousarray(arr)).view_as(target))
            read_arrays_into(wf, direct)  # straight from disk into the parameters: one copy
        self.header = WeightsHeader(wf.header.major, wf.header.minor, wf.header.revision,
                                    wf.header.seen)
        self.weights_notes = list(wf.notes)
        self.unfold_batchnorm()
        if not self.training:
            self.fold_batchnorm()
        return wf

    def layer_arrays(self, index: int, transposed: bool | None = None) -> dict[str, np.ndarray]:
        """A layer's arrays as float32 numpy in the layout of a file whose header says
        ``transposed`` (default: the header of the loaded file)."""
        if transposed is None:
            transposed = self.header.transposed
        spec = self.network.layers[index]
        return {name: spec.to_file_layout(
                    name, t.detach().cpu().numpy().astype(np.float32, copy=False), transposed)
                for name, t in self.layers[index].weight_tensors()}

    def save_weights(self, path: str | os.PathLike, upto: int | None = None,
                     header: WeightsHeader | None = None) -> None:
        """Write Darknet .weights (atomically). ``upto``: only layers ``< upto`` (Darknet's
        ``partial``). The header of the loaded file is kept, so load → save is
        byte-identical."""
        header = header or self.header
        # The layout follows the header being written, not the one the weights came from.
        arrays = _LazyArrays(self, header.transposed)
        write_weights_file(path, header, self.network.layers, arrays, upto)

    def save_cfg(self, path: str | os.PathLike) -> None:
        self.network.cfg.save(path)


class _LazyArrays:
    """Mapping index → arrays, converted from the model one layer at a time while writing."""

    def __init__(self, model: DarknetModel, transposed: bool):
        self.model = model
        self.transposed = transposed

    def get(self, index: int, default=None):
        if not 0 <= index < len(self.model.layers):
            return default
        return self.model.layer_arrays(index, self.transposed)


def load_model(cfg: str | os.PathLike | Cfg | Network, weights: str | os.PathLike | None = None,
               size: tuple[int, int] | None = None, inference: bool = False,
               device: str | torch.device = "cpu") -> DarknetModel:
    """Build the model of ``cfg`` (optionally at ``size`` = (width, height)) and load
    ``weights``. With ``inference=True`` the model is in the fast inference mode (eval,
    BatchNorm folded, no autograd) and ``model(x)`` returns the head outputs."""
    network = cfg if isinstance(cfg, Network) else build_network(cfg, size)
    check_fits(network)  # before any allocation: a typo in a size is an error, not an OOM
    model = DarknetModel(network)
    if weights is not None:
        model.load_weights(weights)
    model.to(device)
    if inference:
        model.inference()
    else:
        model.eval()
    return model
