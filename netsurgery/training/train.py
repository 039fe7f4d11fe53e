"""Partial retraining: train layers K+1.. of a copy of a base network on a new task while
layers 0..K stay bit-identical to the base, so that the trunk can be shared by a merged
network (Bailer & Fassold: share until k, retrain from k+1).

What :func:`train` does, in Darknet's terms:

* Weights: the base ``.weights`` file is read against the *base* cfg (``base_cfg``; by default
  the ``.cfg`` with the same stem beside the weights, else the task cfg). Every layer of the
  task cfg whose arrays have the same names and shapes as the base layer at the same index
  gets the base arrays; the others (e.g. the convs before [yolo] when the class count
  changed) are initialised like Darknet's make_convolutional_layer: weights uniform in
  ±sqrt(2/(size²·c/groups)), biases 0, BN scales 1, rolling mean 0, variance 1.
* Freezing (``freeze_until=K``, or ``stopbackward=1`` on layer K in the cfg): layers 0..K get
  no gradient, are not given to the optimiser and run in inference mode (BatchNorm uses and
  keeps its rolling statistics, folded into the kernels for speed) under ``torch.no_grad``;
  the tail trains. After saving, layers 0..K of the saved file are compared bit for bit with
  the base file and the result is logged. The saved cfg carries ``stopbackward=1`` on K so
  that Darknet continues with the same freeze. (Darknet itself, with ``stopbackward``,
  still updates the frozen layers' BatchNorm statistics; netsurgery does not.)
* Optimiser: Darknet's SGD — momentum, ``decay`` on conv / connected weights only, gradient =
  sum of the deltas / batch; learning rate from ``[net]``: burn-in lr·(i/burn_in)^power,
  then ``policy`` (constant, step, steps, poly, exp, sigmoid) at iteration i = updates so far.
* Loss: :mod:`netsurgery.training.loss` on the raw outputs of the conv before each [yolo] (the model is
  run with those layers as targets; the [yolo] activation is applied inside the loss).
* Data: images from the .data ``train`` list, augmented by :mod:`netsurgery.training.augment`
  (seeded: sample ``s`` of iteration ``i`` always gets the same image and augmentation, so a
  resumed or multi-process run sees the same data as a single uninterrupted one).
* Multi-scale (``random`` of the last [yolo], with augmentation): every 10 iterations the
  model is resized (:meth:`DarknetModel.resize`, weights shared) to Darknet's random size
  (:class:`netsurgery.training.augment.MultiScale`); the loss takes anchors in that size's pixels.
  ``multi_scale=False`` keeps the cfg's size. The model is resized back before saving.
* Output in ``out_dir`` (``<stem>`` = the task cfg's file stem): ``<stem>.cfg``,
  ``<stem>_last.weights`` (every ``save_every`` iterations), ``<stem>_<iter>.weights``
  (every ``keep_every``), ``<stem>_final.weights``, ``<stem>_state.json`` + ``<stem>_optim.pt``
  (for ``resume``), ``train_log.csv``, ``train.log``, ``loss.png``. The .weights header's
  ``seen`` is the number of images trained on, so Darknet resumes at the same iteration.
* Several processes: started by ``torchrun`` (``WORLD_SIZE``/``RANK`` set), the same code
  trains with PyTorch DDP (gloo on CPU): every process takes its share of each batch, the
  gradients are averaged, and only rank 0 writes files. With BatchNorm in the trainable tail
  the batch statistics are per process (as with Darknet's subdivisions), so results then
  differ slightly from one process.
* Validation: at the end, Darknet's ``detector map`` mAP@0.5 on the ``valid`` list
  (:mod:`netsurgery.detection.evaluate`), when the list is set and not empty.
* Speed on a CPU: the default batch is Darknet's mini-batch (batch/subdivisions), at most 16
  (8 for an inference cfg with batch=1); the frozen trunk needs no autograd, and without
  augmentation its outputs are computed once per image and kept (``feature_cache`` bytes).
"""
from __future__ import annotations

import csv
import gc
import io
import json
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from netsurgery.darknet.cfg import Cfg, Section, load_cfg
from netsurgery.darknet.model import DarknetModel
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import WeightsFile, WeightsHeader, load_weights
from netsurgery.detection.evaluate import EvalResult, evaluate_model
from netsurgery.errors import NetsurgeryError, UsageError, WeightsError
from netsurgery.fileio import atomic_open, atomic_write_text, check_output

from .augment import AugmentConfig, MultiScale, unsupported_options
from .batches import CACHE_BYTES, TrainImages
from .data import load_data_file, load_dataset
from .loss import DetectionLoss

CPU_BATCH_MAX = 16  # default batch cap: cfg batches are sized for GPUs
CPU_BATCH_DEFAULT = 8  # for inference cfgs (batch=1)


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Schedule:
    """Darknet's learning-rate schedule and SGD settings (``[net]``)."""

    learning_rate: float = 0.001
    momentum: float = 0.9
    decay: float = 0.0001
    burn_in: int = 0
    power: float = 4.0
    policy: str = "constant"
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    step: int = 1
    scale: float = 1.0
    gamma: float = 1.0
    max_batches: int = 0

    @classmethod
    def from_cfg(cls, net: Section, lr: float | None = None) -> "Schedule":
        policy = net.get_str("policy", "constant")
        if policy not in ("constant", "step", "steps", "poly", "exp", "sigmoid"):
            raise net.error(f"policy={policy}: netsurgery's trainer supports constant, step, "
                            "steps, poly, exp and sigmoid", "policy")
        steps: tuple[int, ...] = ()
        scales: tuple[float, ...] = ()
        if policy == "steps":
            if not (net.has("steps") and net.has("scales")):
                raise net.error("policy=steps needs steps= and scales=", "policy")
            steps = tuple(net.get_ints("steps"))
            scales = tuple(net.get_floats("scales"))
            if len(steps) != len(scales):
                raise net.error(f"steps has {len(steps)} values, scales {len(scales)}: "
                                "expected as many", "scales")
        rate = net.get_float("learning_rate", 0.001) if lr is None else lr
        if not rate > 0:
            raise UsageError(f"learning rate {rate}: expected a positive number")
        return cls(learning_rate=rate,
                   momentum=net.get_float("momentum", 0.9),
                   decay=net.get_float("decay", 0.0001),
                   burn_in=net.get_int("burn_in", 0),
                   power=net.get_float("power", 4.0),
                   policy=policy, steps=steps, scales=scales,
                   step=max(net.get_int("step", 1), 1),
                   scale=net.get_float("scale", 1.0),
                   gamma=net.get_float("gamma", 1.0),
                   max_batches=net.get_int("max_batches", 0))

    def rate(self, iteration: int) -> float:
        """Darknet's get_current_rate for batch_num = ``iteration`` (updates done so far)."""
        if iteration < self.burn_in:
            return self.learning_rate * (iteration / self.burn_in) ** self.power
        lr = self.learning_rate
        if self.policy == "constant":
            return lr
        if self.policy == "step":
            return lr * self.scale ** (iteration // self.step)
        if self.policy == "steps":
            for step, scale in zip(self.steps, self.scales):
                if step > iteration:
                    break
                lr *= scale
            return lr
        if self.policy == "poly":
            if self.max_batches <= 0:
                return lr
            return lr * max(0.0, 1 - iteration / self.max_batches) ** self.power
        if self.policy == "exp":
            return lr * self.gamma ** iteration
        return lr / (1 + math.exp(self.gamma * (iteration - self.step)))  # sigmoid


# --------------------------------------------------------------------------- results


@dataclass
class TrainProgress:
    """Reported after every iteration (rank 0 only)."""

    iteration: int  # iterations done (1-based after the first update)
    iterations: int  # target
    loss: float  # per image, this iteration's batch
    parts: dict[str, float]
    lr: float
    images_per_sec: float
    avg_iou: float
    seconds: float  # since the start of this run
    size: tuple[int, int] = (0, 0)  # the input (width, height) of this iteration

    def line(self) -> str:
        parts = " ".join(f"{k} {v:.3f}" for k, v in self.parts.items())
        return (f"iteration {self.iteration}/{self.iterations}: loss {self.loss:.4f} ({parts}) "
                f"avg IoU {self.avg_iou:.3f}, lr {self.lr:.6g}, {self.size[0]}x{self.size[1]}, "
                f"{self.images_per_sec:.1f} images/s, {self.seconds:.1f} s")


@dataclass
class LayerInit:
    """Which layers got the base's arrays and which were initialised fresh."""

    copied: list[int] = field(default_factory=list)
    reinitialised: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a training run produced (paths are None on ranks other than 0)."""

    out_dir: Path
    cfg_path: Path | None
    final_weights: Path | None
    last_weights: Path | None
    log_csv: Path | None
    chart: Path | None
    start_iteration: int
    iterations: int
    seen: int
    batch: int
    freeze_until: int
    losses: list[tuple[int, float]]  # (iteration, loss per image), resumed runs included
    layers: LayerInit
    images_per_sec: float
    trunk_verified: bool | None  # None when nothing is frozen or on ranks other than 0
    evaluation: EvalResult | None
    messages: list[str]
    rank: int = 0
    world_size: int = 1

    @property
    def map50(self) -> float | None:
        return self.evaluation.map if self.evaluation is not None else None

    @property
    def first_loss(self) -> float:
        return self.losses[0][1] if self.losses else float("nan")

    @property
    def final_loss(self) -> float:
        """Mean loss of the last (up to) 10 iterations."""
        tail = [v for _, v in self.losses[-10:]]
        return float(np.mean(tail)) if tail else float("nan")


# --------------------------------------------------------------------------- weights


def default_base_cfg(weights: str | os.PathLike, task_cfg: str | os.PathLike) -> Path:
    """The cfg the base weights belong to: ``<stem>.cfg`` beside the weights, else the task
    cfg."""
    beside = Path(weights).with_suffix(".cfg")
    return beside if beside.is_file() else Path(task_cfg)


def fresh_arrays(spec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Darknet's initial values for a layer's arrays (make_*_layer)."""
    out = {}
    for arr in spec.weight_arrays():
        if arr.name == "weights":
            if spec.type_name == "convolutional":
                fan_in = spec.size * spec.size * spec.in_shape.c // spec.groups
                bound = math.sqrt(2.0 / fan_in)
                value = rng.uniform(-bound, bound, arr.shape)
            elif spec.type_name == "connected":
                bound = math.sqrt(2.0 / spec.in_shape.numel)
                value = rng.uniform(-bound, bound, arr.shape)
            else:  # shortcut weights start at 1 (a plain sum)
                value = np.ones(arr.shape)
        elif arr.name in ("scales", "rolling_variance"):
            value = np.ones(arr.shape)
        else:  # biases, rolling_mean
            value = np.zeros(arr.shape)
        out[arr.name] = value.astype(np.float32)
    return out


# Initial objectness of a freshly initialised head: logistic(-4.6) ≈ 0.01 instead of 0.5.
# Darknet starts at 0.5, which makes the first hundreds of iterations do nothing but push
# thousands of empty cells down; with the prior, short CPU runs learn the objects instead.
OBJECTNESS_PRIOR_BIAS = -4.6


def _objectness_prior(network: Network, spec, arrays: dict[str, np.ndarray]) -> None:
    """Set the objectness biases of a fresh convolution that feeds a [yolo] layer."""
    nxt = spec.index + 1
    if spec.type_name != "convolutional" or nxt >= len(network.layers):
        return
    yolo = network.layers[nxt]
    if yolo.type_name != "yolo" or spec.batch_normalize:
        return
    per_anchor = yolo.classes + 5
    arrays["biases"][4::per_anchor] = OBJECTNESS_PRIOR_BIAS


def init_from_base(model: DarknetModel, base: WeightsFile, base_net: Network,
                   seed: int) -> LayerInit:
    """Copy the base arrays into every layer whose arrays match by name and shape (same
    index, same type); initialise the others fresh. Returns which was which."""
    report = LayerInit()
    task = model.network
    with torch.no_grad():
        for spec in task.layers:
            wanted = spec.weight_arrays()
            if not wanted:
                continue
            reason = None
            lw = base.layers.get(spec.index)
            if spec.index >= len(base_net.layers):
                reason = "not in the base network"
            elif lw is None:
                reason = "not in the base weights file"
            elif base_net.layers[spec.index].type_name != spec.type_name:
                reason = (f"base layer is [{base_net.layers[spec.index].section.header}], "
                          f"task layer is [{spec.section.header}]")
            else:
                have = {name: tuple(a.shape) for name, a in lw.arrays.items()}
                want = {a.name: tuple(a.shape) for a in wanted}
                if have != want:
                    diff = [f"{n} {have.get(n)} vs {s}" for n, s in want.items()
                            if have.get(n) != s]
                    reason = "shapes differ: " + ", ".join(diff)
            if reason is None:
                arrays = {name: np.asarray(a) for name, a in lw.arrays.items()}
                report.copied.append(spec.index)
            else:
                arrays = fresh_arrays(spec, np.random.default_rng([seed, 1, spec.index]))
                _objectness_prior(task, spec, arrays)
                report.reinitialised.append(spec.index)
                report.reasons[spec.index] = reason
            tensors = dict(model.layers[spec.index].weight_tensors())
            for name, arr in arrays.items():
                if base.header.transposed and name == "weights" and spec.type_name == "connected":
                    arr = arr.T
                target = tensors[name]
                target.copy_(torch.from_numpy(np.ascontiguousarray(arr)).view_as(target))
    return report


def compare_trunk(saved: str | os.PathLike, saved_net: Network, base: str | os.PathLike,
                  base_net: Network, upto: int) -> list[str]:
    """Differences between layers 0..upto of two .weights files, bit for bit (empty list =
    identical)."""
    a = load_weights(saved, saved_net.layers)
    b = load_weights(base, base_net.layers)
    problems = []
    for index in range(upto + 1):
        la, lb = a.layers.get(index), b.layers.get(index)
        if la is None and lb is None:
            continue
        if la is None or lb is None:
            problems.append(f"layer {index}: arrays in only one of the files")
            continue
        for name, arr in lb.arrays.items():
            other = la.arrays.get(name)
            if other is None or other.shape != arr.shape or \
                    not np.array_equal(other.view(np.uint32), arr.view(np.uint32)):
                problems.append(f"layer {index} {name}")
    return problems


# --------------------------------------------------------------------------- the network


class TrainNet(nn.Module):
    """The model as trained: layers 0..K frozen (inference mode, no autograd), outputs = the
    raw inputs of the [yolo] layers.

    With ``feature_budget`` > 0 the frozen trunk's outputs are kept per image key (pass
    ``keys``), up to that many bytes: only valid when an image always gives the same input,
    i.e. without augmentation."""

    def __init__(self, model: DarknetModel, freeze_until: int, targets: Sequence[int],
                 feature_budget: int = 0):
        super().__init__()
        self.model = model
        self.freeze_until = freeze_until
        self.targets = list(targets)
        network = model.network
        # outputs of frozen layers that the trained tail reads
        self.boundary = sorted({j for spec in network.layers[freeze_until + 1:]
                                for j in spec.inputs() if 0 <= j <= freeze_until})
        self._features: dict[int, list[torch.Tensor]] = {}
        self._budget = feature_budget if freeze_until >= 0 and self.boundary else 0

    def _trunk(self, x: torch.Tensor, keys: Sequence[int] | None) -> dict[int, torch.Tensor]:
        with torch.no_grad():
            if not self._budget or keys is None:
                return self.model.run(x, self.boundary)
            missing = [k for k, key in enumerate(keys) if key not in self._features]
            got: dict[int, list[torch.Tensor]] = {}
            if missing:
                fresh = self.model.run(x[missing], self.boundary)
                for row, k in enumerate(missing):
                    per_image = [fresh[j][row].clone() for j in self.boundary]
                    got[keys[k]] = per_image
                    size = sum(t.numel() * t.element_size() for t in per_image)
                    if size <= self._budget:  # else: computed again next time
                        self._features[keys[k]] = per_image
                        self._budget -= size
            rows = [self._features.get(key) or got[key] for key in keys]
            return {j: torch.stack([r[n] for r in rows]) for n, j in enumerate(self.boundary)}

    def forward(self, x: torch.Tensor, keys: Sequence[int] | None = None) -> list[torch.Tensor]:
        cache = self._trunk(x, keys) if self.freeze_until >= 0 and self.boundary else None
        out = self.model.run(x, self.targets, cache)
        return [out[t] for t in self.targets]

    def train(self, mode: bool = True) -> "TrainNet":
        super().train(mode)  # (DarknetModel.train drops every folded BatchNorm copy)
        for module in self.model.layers[:self.freeze_until + 1]:
            module.eval()  # frozen BatchNorm keeps its statistics
            if hasattr(module, "fold"):
                module.fold()  # the frozen trunk never changes: fold its BatchNorm once
        return self


def _param_groups(model: DarknetModel, trainable: Sequence[int], decay: float) -> list[dict]:
    """Darknet decays conv / connected weights only."""
    with_decay, without = [], []
    for index in trainable:
        spec = model.network.layers[index]
        for name, tensor in model.layers[index].weight_tensors():
            if not isinstance(tensor, nn.Parameter):
                continue  # rolling statistics are buffers
            if name == "weights" and spec.type_name in ("convolutional", "connected"):
                with_decay.append(tensor)
            else:
                without.append(tensor)
    groups = []
    if with_decay:
        groups.append({"params": with_decay, "weight_decay": decay})
    if without:
        groups.append({"params": without, "weight_decay": 0.0})
    return groups


# --------------------------------------------------------------------------- validation


def evaluate_map(model: DarknetModel, data: str | os.PathLike,
                 strict: bool = False) -> EvalResult:
    """Darknet's ``detector map`` (thresh 0.005, NMS 0.45, IoU 0.5, area under the curve) of
    ``model`` on the ``valid`` list of the .data file ``data``
    (:func:`netsurgery.detection.evaluate.evaluate_model`), with every layer in inference mode; each
    module's mode is restored afterwards (a frozen trunk stays in eval mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return evaluate_model(model, data, strict=strict)
    finally:
        for module, mode in modes:
            module.training = mode


# --------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    created: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_setup(device: str) -> _Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        created = True
    return _Dist(dist.get_rank(), dist.get_world_size(), created)


def _all_sum(values: list[float], dist_ctx: _Dist) -> list[float]:
    if dist_ctx.world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _barrier(dist_ctx: _Dist) -> None:
    if dist_ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- options


def freeze_from_cfg(cfg: Cfg) -> int | None:
    """The layer Darknet's backward pass stops at (the last layer with stopbackward=1)."""
    marked = [i for i, s in enumerate(cfg.layers) if s.get_int("stopbackward", 0)]
    return max(marked) if marked else None


def default_batch(net: Section) -> int:
    """Darknet's mini-batch (batch/subdivisions) capped for a CPU; an inference cfg's
    batch=1 becomes CPU_BATCH_DEFAULT."""
    batch = net.get_int("batch", 1)
    subdivisions = max(net.get_int("subdivisions", 1), 1)
    mini = batch // subdivisions
    if mini < 2:
        return CPU_BATCH_DEFAULT
    return min(mini, CPU_BATCH_MAX)


def checkpoint_cfg(cfg: Cfg, freeze_until: int, batch: int, lr: float | None) -> Cfg:
    """The cfg written beside the checkpoints: stopbackward=1 on the last frozen layer only,
    batch as trained (so Darknet's iteration = seen / batch matches)."""
    out = cfg.copy()
    for section in out.layers:
        section.remove("stopbackward")
    if freeze_until >= 0:
        out.layers[freeze_until].set("stopbackward", 1)
    out.net.set("batch", batch)
    out.net.set("subdivisions", 1)
    if lr is not None:
        out.net.set("learning_rate", lr)
    return out


@dataclass
class _Paths:
    out: Path
    stem: str

    @property
    def cfg(self) -> Path:
        return self.out / f"{self.stem}.cfg"

    @property
    def last(self) -> Path:
        return self.out / f"{self.stem}_last.weights"

    @property
    def final(self) -> Path:
        return self.out / f"{self.stem}_final.weights"

    def numbered(self, iteration: int) -> Path:
        return self.out / f"{self.stem}_{iteration}.weights"

    @property
    def state(self) -> Path:
        return self.out / f"{self.stem}_state.json"

    @property
    def optim(self) -> Path:
        return self.out / f"{self.stem}_optim.pt"

    @property
    def csv(self) -> Path:
        return self.out / "train_log.csv"

    @property
    def log(self) -> Path:
        return self.out / "train.log"

    @property
    def chart(self) -> Path:
        return self.out / "loss.png"


CSV_FIELDS = ("iteration", "loss", "box", "obj", "cls", "avg_iou", "lr", "images_per_sec",
              "seconds", "input")


def _read_csv_rows(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle)]
    return [row for row in rows if int(row["iteration"]) <= upto]


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_loss_chart(path: Path, rows: Sequence[dict]) -> None:
    """Loss per iteration (and a running mean) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    its = np.array([int(r["iteration"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(its, loss, lw=0.8, alpha=0.5, label="loss per image")
    if len(loss) >= 5:
        k = min(20, len(loss))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(its[k - 1:], smooth, lw=1.6, label=f"mean of {k}")
    if len(loss) and loss.min() > 0 and loss.max() / loss.min() > 20:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png")


# --------------------------------------------------------------------------- training


class _Prefetch:
    """Prepares the next iteration's batch in a thread while the current one trains, as
    Darknet loads data in its own threads: decoding and augmentation (numpy and OpenCV, which
    release the GIL) overlap the model's work. One batch ahead, in order; the batches are
    the same as without it (they depend on the iteration only)."""

    def __init__(self, make: Callable[[int], tuple], thread: bool = True):
        self.make = make
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="netsurgery-batches") \
            if thread else None
        self.pending: dict[int, Future] = {}

    def get(self, iteration: int, following: int | None) -> tuple:
        """The batch of ``iteration``; starts preparing ``following`` (None: nothing)."""
        if self.pool is None:
            return self.make(iteration)
        current = self.pending.pop(iteration, None) or self.pool.submit(self.make, iteration)
        if following is not None and following not in self.pending:
            self.pending[following] = self.pool.submit(self.make, following)
        return current.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()


def train(cfg: str | os.PathLike, weights: str | os.PathLike, data: str | os.PathLike,
          freeze_until: int | None = None, iterations: int | None = None,
          batch: int | None = None, lr: float | None = None, *,
          out_dir: str | os.PathLike, resume: bool = False, augment: bool = True,
          seed: int = 0, progress: Callable[[TrainProgress], None] | None = None,
          strict: bool = False, device: str = "cpu",
          base_cfg: str | os.PathLike | None = None, save_every: int = 100,
          keep_every: int = 1000, log_every: int = 10, overwrite: bool = False,
          validate: bool = True, log: Callable[[str], None] | None = None,
          feature_cache: int = CACHE_BYTES, multi_scale: bool = True,
          prefetch: bool = True) -> TrainResult:
    """Retrain layers ``freeze_until+1..`` of ``cfg`` (the task network) starting from the
    base ``weights``, on the dataset of the ``.data`` file ``data``; see the module
    docstring for the rules. ``freeze_until=None`` takes the cfg's ``stopbackward`` layer,
    else trains everything (-1). ``iterations`` (default ``max_batches``), ``batch``
    (default Darknet's mini-batch, at most 16) and ``lr`` (default ``learning_rate``)
    override the cfg. ``resume`` continues the run in ``out_dir`` (to ``iterations`` in
    total). ``progress`` is called after each iteration, ``log`` with each message (both on
    rank 0 only). ``feature_cache``: bytes of frozen-trunk outputs kept per image when
    ``augment`` is off. ``multi_scale=False`` ignores the cfg's ``random`` (multi-scale
    needs ``augment``). ``prefetch``: prepare the next batch in a thread while the current
    one trains (the batches are the same either way)."""
    for name, value in (("save_every", save_every), ("keep_every", keep_every),
                        ("log_every", log_every)):
        if value < 1:
            raise UsageError(f"{name}={value}: expected a positive number of iterations")
    dist_ctx = _dist_setup(device)
    run = _Run(dist_ctx, log, progress, device)
    try:
        run.setup(Path(cfg), Path(weights), Path(data), freeze_until, iterations, batch, lr,
                  Path(out_dir), resume, augment, seed, strict,
                  Path(base_cfg) if base_cfg is not None else None, overwrite, validate,
                  feature_cache, multi_scale)
        run.loop(save_every, keep_every, log_every, prefetch)
        return run.finish()
    finally:
        run.close()
        if dist_ctx.created:
            import torch.distributed as dist

            dist.destroy_process_group()


class _Run:
    """One training run: setup (options, data, model, optimiser), the loop, the end."""

    def __init__(self, dist_ctx: _Dist, log, progress, device: str):
        self.dist = dist_ctx
        self.log, self.progress, self.device = log, progress, device
        self.messages: list[str] = []
        self.prefetch: _Prefetch | None = None

    def note(self, text: str) -> None:
        self.messages.append(text)
        if self.log is not None and self.dist.main:
            self.log(text)

    def close(self) -> None:
        """Drop the DDP wrapper before the process group goes: its reducer holds gloo
        threads, and destroying it after the group aborts the process (seen as
        "terminate called without an active exception" at exit)."""
        if self.prefetch is not None:
            self.prefetch.close()
        self.module = None
        gc.collect()

    # -- setup ----------------------------------------------------------------------------
    def setup(self, cfg_path: Path, weights: Path, data: Path, freeze_until, iterations,
              batch, lr, out_dir: Path, resume: bool, augment: bool, seed: int, strict: bool,
              base_cfg: Path | None, overwrite: bool, validate: bool,
              feature_cache: int, multi_scale: bool) -> None:
        torch.manual_seed(seed)
        self.cfg_path, self.weights, self.seed, self.augment = cfg_path, weights, seed, augment
        self.cfg = load_cfg(cfg_path)
        self.network = build_network(self.cfg)
        if self.network.net.channels != 3:
            raise self.cfg.net.error(f"channels={self.network.net.channels}: training reads "
                                     "RGB images, expected channels=3", "channels")
        self.loss_fn = DetectionLoss(self.network)
        self.paths = _Paths(out_dir, cfg_path.stem)
        self.state = _read_state(self.paths) if resume else None
        self._options(freeze_until, iterations, batch, lr)
        self._data(data, strict, validate)
        self.base_cfg = base_cfg or default_base_cfg(weights, cfg_path)
        self.base_cfg_guessed = base_cfg is None and self.base_cfg == cfg_path
        self.inputs = [cfg_path, weights, data, self.base_cfg]
        # every rank checks (read-only), so a refused output stops all processes alike
        _check_outputs(self.paths, self.inputs, resume, overwrite)
        if self.state is not None and self.paths.log.is_file():
            self.messages[:0] = self.paths.log.read_text().splitlines()  # earlier runs
        self._model()
        self._optimiser(feature_cache)
        net = self.network.net
        self.images = TrainImages(self.train_set, net.width, net.height,
                                  AugmentConfig.from_cfg(self.cfg), augment, seed)
        self.scales = MultiScale(net.width, net.height)
        if augment and multi_scale:
            self.scales = MultiScale.from_cfg(self.cfg, net.width, net.height)
        if self.scales.coef:
            w, h = self.scales.largest
            self.note(f"multi-scale training (random of the last [yolo]): every "
                      f"{self.scales.every} iterations a size up to {w}x{h}, step "
                      f"{self.scales.step}")
        if self.dist.main:
            checkpoint_cfg(self.cfg, self.freeze_until, self.batch, lr).save(self.paths.cfg)
        self.rows = _read_csv_rows(self.paths.csv, self.start) if self.state else []

    def _options(self, freeze_until, iterations, batch, lr) -> None:
        n_layers, state = len(self.network.layers), self.state
        if freeze_until is None:
            freeze_until = state["freeze_until"] if state else freeze_from_cfg(self.cfg)
            freeze_until = -1 if freeze_until is None else freeze_until
        if not -1 <= freeze_until < n_layers:
            raise UsageError(f"freeze-until {freeze_until}: expected -1 (train everything) "
                             f".. {n_layers - 1} (the last layer of {self.cfg_path})")
        for head, target in zip(self.loss_fn.heads, self.loss_fn.inputs):
            if target <= freeze_until:
                raise UsageError(f"freeze-until {freeze_until} freezes layer {target}, the "
                                 f"conv before the [yolo] layer {head.layer}: nothing left to "
                                 "train for that head; choose a smaller K")
        if batch is None:
            batch = state["batch"] if state else default_batch(self.cfg.net)
        if batch < self.dist.world:
            raise UsageError(f"batch {batch} is smaller than the number of processes "
                             f"({self.dist.world}): every process needs at least one image")
        self.schedule = Schedule.from_cfg(self.cfg.net, lr)
        if iterations is None:
            iterations = self.schedule.max_batches
        if iterations < 1:
            raise UsageError(f"iterations={iterations}: expected at least 1 (set "
                             "--iterations or max_batches in [net])")
        if state is not None:
            for key, value in (("batch", batch), ("freeze_until", freeze_until),
                               ("seed", self.seed)):
                if state[key] != value:
                    raise UsageError(f"{self.paths.state}: the run was started with {key}="
                                     f"{state[key]}, resume asks for {value}; resume with "
                                     "the same value")
        self.freeze_until, self.batch, self.iterations = freeze_until, batch, iterations

    def _data(self, data: Path, strict: bool, validate: bool) -> None:
        data_file = load_data_file(data)
        n_classes = data_file.require_classes()
        for head in self.loss_fn.heads:
            if head.classes != n_classes:
                line = self.network.layers[head.layer].section.line
                raise UsageError(f"{data_file.where('classes')}: classes = {n_classes}, but "
                                 f"{self.cfg_path}:{line} [yolo] layer {head.layer} has "
                                 f"classes={head.classes}")
        self.train_set = load_dataset(data_file.require("train"), n_classes, strict=strict)
        if self.train_set.issues:
            self.note(f"training list: {self.train_set.summary} (first problem: "
                      f"{self.train_set.issues[0]})")
        self.data_path, self.strict, self.valid_set = data, strict, None
        if validate and data_file.valid is not None and data_file.resolved["valid"].exists:
            self.valid_set = load_dataset(data_file.valid, n_classes, strict=strict)

    def _model(self) -> None:
        network, paths = self.network, self.paths
        self.base_net = build_network(load_cfg(self.base_cfg))
        try:
            base_wf = load_weights(self.weights, self.base_net.layers)
        except WeightsError as exc:
            if self.base_cfg_guessed:  # the task cfg, for want of a cfg beside the weights
                raise WeightsError(f"{exc.args[0].split(' — ')[0]}: read with "
                                   f"{self.base_cfg} because no .cfg is beside the weights; "
                                   "pass --base-cfg with the cfg they belong to") from None
            raise
        model = DarknetModel(network)
        self.layers = init_from_base(model, base_wf, self.base_net, self.seed)
        model.header = WeightsHeader(base_wf.header.major, base_wf.header.minor,
                                     base_wf.header.revision, 0)
        self.note(f"base weights {self.weights} read with {self.base_cfg}: "
                  f"{len(self.layers.copied)} layers copied")
        for index in self.layers.reinitialised:
            self.note(f"layer {index} [{network.layers[index].section.header}] initialised "
                      f"fresh ({self.layers.reasons[index]})")
        frozen_fresh = [i for i in self.layers.reinitialised if i <= self.freeze_until]
        if frozen_fresh:
            raise UsageError(f"layers {', '.join(map(str, frozen_fresh))} would be frozen but "
                             f"have no base weights ({self.layers.reasons[frozen_fresh[0]]}); "
                             "choose a smaller freeze-until or matching base weights")
        self.start = 0
        if self.state is not None:
            wf = load_weights(paths.last, network.layers, allow_partial=False)
            expected = self.state["iteration"] * self.batch
            if wf.header.seen != expected:
                raise UsageError(f"{paths.last}: header says {wf.header.seen} images seen, "
                                 f"{paths.state} says {expected}: the checkpoint and its "
                                 "state do not belong together")
            model.load_weights(wf)
            self.start = self.state["iteration"]
            self.note(f"resuming from {paths.last} at iteration {self.start}")
        for text in self.loss_fn.unsupported + unsupported_options(self.cfg):
            self.note(f"ignored by netsurgery's trainer: {text}")
        model.to(self.device)
        model.unfold_batchnorm()
        for module in model.layers[:self.freeze_until + 1]:
            module.requires_grad_(False)
        self.model = model

    def _optimiser(self, feature_cache: int) -> None:
        model, k = self.model, self.freeze_until
        # without augmentation an image's trunk output never changes: compute it once
        self.net = TrainNet(model, k, self.loss_fn.inputs,
                            feature_budget=0 if self.augment else feature_cache)
        needed = set(model.plan(self.loss_fn.inputs, self.net.boundary).order)
        trainable = [i for i in range(k + 1, len(model.layers)) if i in needed]
        for i in range(k + 1, len(model.layers)):
            if i not in needed:
                model.layers[i].requires_grad_(False)  # feeds no head: nothing to learn
        groups = _param_groups(model, trainable, self.schedule.decay)
        if not groups:
            raise UsageError(f"nothing to train after layer {k}: no layer with weights")
        self.optimizer = torch.optim.SGD(groups, lr=self.schedule.rate(self.start),
                                         momentum=self.schedule.momentum)
        if self.state is not None and self.paths.optim.is_file():
            self.optimizer.load_state_dict(torch.load(self.paths.optim, map_location=self.device,
                                                      weights_only=True))
        if k >= 0:
            self.note(f"layers 0..{k} frozen; training layers {', '.join(map(str, trainable))}")
        self.module: nn.Module = self.net
        if self.dist.world > 1:
            self.module = nn.parallel.DistributedDataParallel(self.net)
            self.note(f"distributed training: {self.dist.world} processes, batch "
                      f"{self.batch} shared")

    # -- loop -----------------------------------------------------------------------------
    def _slots(self) -> range:
        """This process's contiguous share of each global batch."""
        world, rank = self.dist.world, self.dist.rank
        share = [len(range(r, self.batch, world)) for r in range(world)]
        return range(sum(share[:rank]), sum(share[:rank + 1]))

    def step(self, iteration: int, slots: range) -> tuple[float, list[float]]:
        """One update; returns the learning rate and the batch totals (all processes):
        loss, box, obj, cls, assigned truths, IoU sum."""
        rate = self.schedule.rate(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        size = self.scales.size(iteration, self.iterations, self.seed)
        self.model.resize(*size)  # nothing to do while the size stays
        following = iteration + 1 if iteration + 1 < self.iterations else None
        x, truths, keys = self.prefetch.get(iteration, following)
        result = self.loss_fn(self.module(x, keys), truths, size)
        # Darknet divides the summed deltas by the batch; DDP averages over processes
        (result.total * (self.dist.world / self.batch)).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        parts = result.parts
        self.size = size
        return rate, _all_sum([float(result.total.detach()), parts["box"], parts["obj"],
                               parts["cls"], result.count, result.avg_iou * result.count],
                              self.dist)

    def loop(self, save_every: int, keep_every: int, log_every: int, prefetch: bool) -> None:
        slots = self._slots()
        self.prefetch = _Prefetch(lambda i: self.images.batch(
            i, self.batch, slots, self.device, self.scales.size(i, self.iterations, self.seed)),
            thread=prefetch)
        self.net.train()
        t_run = time.perf_counter()
        self.timed_images, self.timed_seconds = 0, 0.0
        iteration = self.start
        while iteration < self.iterations:
            t0 = time.perf_counter()
            rate, totals = self.step(iteration, slots)
            iteration += 1
            dt = time.perf_counter() - t0
            if iteration > self.start + 1 or self.iterations - self.start == 1:
                self.timed_images += self.batch  # the first iteration warms up
                self.timed_seconds += dt
            info = self._progress(iteration, rate, totals, dt, time.perf_counter() - t_run)
            if not math.isfinite(info.loss):
                raise NetsurgeryError(f"iteration {iteration}: the loss is {info.loss}; lower "
                                      "the learning rate (--lr) or raise burn_in")
            if not self.dist.main:
                continue
            if self.progress is not None:
                self.progress(info)
            if iteration % log_every == 0 or iteration == self.iterations:
                self.messages.append(info.line())
            if iteration % save_every == 0 and iteration < self.iterations:
                self._checkpoint(iteration)
            if iteration % keep_every == 0:
                numbered = check_output(self.paths.numbered(iteration), self.inputs,
                                        overwrite=True)
                self.model.save_weights(numbered, header=_header(self.model, iteration,
                                                                 self.batch))
        self.iteration = iteration
        self.prefetch.close()
        self.model.resize(self.scales.width, self.scales.height)  # back to the cfg's size

    def _progress(self, iteration: int, rate: float, totals: list[float], dt: float,
                  seconds: float) -> TrainProgress:
        b = self.batch
        count = totals[4]
        info = TrainProgress(iteration, self.iterations, totals[0] / b,
                             {k: v / b for k, v in zip(("box", "obj", "cls"), totals[1:4])},
                             rate, b / dt if dt > 0 else float("inf"),
                             totals[5] / count if count else 0.0, seconds, self.size)
        self.rows.append({"iteration": iteration, "loss": f"{info.loss:.6g}",
                          **{k: f"{v:.6g}" for k, v in info.parts.items()},
                          "avg_iou": f"{info.avg_iou:.4f}", "lr": f"{rate:.6g}",
                          "images_per_sec": f"{info.images_per_sec:.2f}",
                          "seconds": f"{seconds:.2f}",
                          "input": f"{self.size[0]}x{self.size[1]}"})
        return info

    def _checkpoint(self, iteration: int) -> None:
        state = dict(freeze_until=self.freeze_until, seed=self.seed, augment=self.augment,
                     multi_scale=bool(self.scales.coef))
        _checkpoint(self.model, self.paths, iteration, self.batch, self.optimizer, self.rows,
                    self.messages, state)

    # -- end ------------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """Final weights (rank 0), the trunk check, validation mAP, log and chart."""
        paths, iteration, k = self.paths, self.iteration, self.freeze_until
        ips = self.timed_images / self.timed_seconds if self.timed_seconds > 0 else 0.0
        verified, evaluation = None, None
        if self.dist.main:
            self.model.save_weights(paths.final, header=_header(self.model, iteration,
                                                                 self.batch))
            self._checkpoint(iteration)
            if k >= 0:
                problems = compare_trunk(paths.final, self.network, self.weights,
                                         self.base_net, k)
                if problems:
                    raise RuntimeError(f"{paths.final}: frozen layers changed "
                                       f"({'; '.join(problems)}) — a bug in netsurgery")
                verified = True
                self.note(f"verified: layers 0..{k} of {paths.final} are bit-identical to "
                          f"{self.weights}")
            if self.valid_set is not None and len(self.valid_set):
                self.model.to("cpu")  # the weights are saved: evaluate where the images are
                evaluation = evaluate_map(self.model, self.data_path, self.strict)
                self.note(f"validation ({len(self.valid_set)} images of "
                          f"{self.valid_set.list_path}): mAP@0.5 = {evaluation.map:.4f}")
            done = iteration - self.start
            self.note(f"trained {done} iterations ({done * self.batch} images) at {ips:.1f} "
                      f"images/s; wrote {paths.final}")
            write_loss_chart(paths.chart, self.rows)
            atomic_write_text(paths.log, "\n".join(self.messages) + "\n")
        _barrier(self.dist)
        main = self.dist.main
        return TrainResult(
            out_dir=paths.out, cfg_path=paths.cfg if main else None,
            final_weights=paths.final if main else None,
            last_weights=paths.last if main else None,
            log_csv=paths.csv if main else None, chart=paths.chart if main else None,
            start_iteration=self.start, iterations=iteration, seen=iteration * self.batch,
            batch=self.batch, freeze_until=k,
            losses=[(int(r["iteration"]), float(r["loss"])) for r in self.rows],
            layers=self.layers, images_per_sec=ips, trunk_verified=verified,
            evaluation=evaluation, messages=self.messages, rank=self.dist.rank,
            world_size=self.dist.world)


def _header(model: DarknetModel, iteration: int, batch: int) -> WeightsHeader:
    h = model.header
    return WeightsHeader(h.major, h.minor, h.revision, iteration * batch)


def _checkpoint(model: DarknetModel, paths: _Paths, iteration: int, batch: int, optimizer,
                rows: list[dict], messages: list[str], state_extra: dict) -> None:
    """Weights, optimiser, log, then the state file that marks the checkpoint complete."""
    model.save_weights(paths.last, header=_header(model, iteration, batch))
    with atomic_open(paths.optim, "wb") as handle:
        torch.save(optimizer.state_dict(), handle)
    _write_csv(paths.csv, rows)
    atomic_write_text(paths.log, "\n".join(messages) + "\n")
    state = {"version": 1, "iteration": iteration, "batch": batch,
             "weights": paths.last.name, **state_extra}
    atomic_write_text(paths.state, json.dumps(state, indent=1) + "\n")


def _read_state(paths: _Paths) -> dict:
    if not paths.state.is_file():
        raise UsageError(f"{paths.out}: nothing to resume (no {paths.state.name}); start "
                         "without --resume")
    try:
        state = json.loads(paths.state.read_text())
        for key in ("iteration", "batch", "freeze_until", "seed"):
            int(state[key])
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{paths.state}: not a netsurgery training state ({exc})") from None
    if not paths.last.is_file():
        raise UsageError(f"{paths.state}: its checkpoint {paths.last} is missing")
    return state


def _check_outputs(paths: _Paths, inputs: list, resume: bool, overwrite: bool) -> None:
    outputs = [paths.cfg, paths.last, paths.final, paths.state, paths.optim, paths.csv,
               paths.log, paths.chart]
    for out in outputs:  # never write over an input, whatever the flags
        check_output(out, inputs, overwrite=True)
    if resume or overwrite:
        return
    existing = [p for p in outputs if p.exists()]
    if existing:
        raise UsageError(f"{existing[0]}: exists already (a previous run in {paths.out}?); "
                         "pass --resume to continue it or --overwrite to start over")
