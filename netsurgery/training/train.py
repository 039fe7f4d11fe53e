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
* Loss: :mod:`netsurgery.training.loss` on the raw outputs of the conv before each [yolo]
  (the model is run with those layers as targets; the [yolo] activation is applied inside
  the loss).
* Data: images from the .data ``train`` list (each decoded before the first iteration: one
  that cannot be is skipped and counted, or stops a ``strict`` run), augmented by
  :mod:`netsurgery.training.augment` (seeded: sample ``s`` of iteration ``i`` always gets
  the same image and augmentation, so a resumed or multi-process run sees the same data as
  a single uninterrupted one).
* Multi-scale (``random`` of the last [yolo], with augmentation): every 10 iterations the
  model is resized (:meth:`DarknetModel.resize`, weights shared) to Darknet's random size
  (:class:`netsurgery.training.augment.MultiScale`); the loss takes anchors in that size's pixels.
  ``multi_scale=False`` keeps the cfg's size. The model is resized back before saving.
* The pieces: :mod:`~netsurgery.training.config` (:class:`TrainConfig`, the settings
  resolved from the cfg), :mod:`~netsurgery.training.schedule` (learning rate, burn-in),
  :mod:`~netsurgery.training.base_weights` (the starting point, the trunk check),
  :mod:`~netsurgery.training.freezing` (the frozen trunk and the optimiser),
  :mod:`~netsurgery.training.checkpoints` (files, checkpoints, resume),
  :mod:`~netsurgery.training.logbook` (progress, log, CSV, chart) and
  :mod:`~netsurgery.training.distributed`; this module runs them.
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

import gc
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from netsurgery.darknet.cfg import load_cfg
from netsurgery.darknet.model import DarknetModel
from netsurgery.darknet.network import build_network
from netsurgery.detection.evaluate import EvalResult, evaluate_model
from netsurgery.errors import NetsurgeryError, UsageError, WeightsError
from netsurgery.fileio import DataInput, check_output

from . import distributed
from .augment import AugmentConfig, MultiScale, unsupported_options
from .base_weights import (
    OBJECTNESS_PRIOR_BIAS,
    LayerInit,
    _objectness_prior,
    check_frozen_copied,
    compare_trunk,
    fresh_arrays,
    init_from_base,
    start_from_base,
)
from .batches import TrainImages
from .checkpoints import (
    RunPaths,
    check_outputs,
    check_resume,
    checkpoint_cfg,
    header_at,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from .config import (
    CPU_BATCH_DEFAULT,
    CPU_BATCH_MAX,
    RunOptions,
    TrainConfig,
    default_base_cfg,
    default_batch,
    freeze_from_cfg,
    resolve_options,
)
from .data import load_data_file, load_dataset
from .freezing import TrainNet, freeze, make_trainer
from .logbook import Logbook, TrainProgress
from .loss import DetectionLoss
from .schedule import Schedule

FINAL_LOSS_ITERATIONS = 10  # one iteration's loss jumps with its batch: report a mean

__all__ = ["CPU_BATCH_DEFAULT", "CPU_BATCH_MAX", "FINAL_LOSS_ITERATIONS",
           "OBJECTNESS_PRIOR_BIAS", "LayerInit", "RunOptions", "Schedule", "TrainConfig",
           "TrainNet", "TrainProgress", "TrainResult", "_objectness_prior", "check_config",
           "checkpoint_cfg", "compare_trunk", "default_base_cfg", "default_batch",
           "evaluate_map", "freeze_from_cfg", "fresh_arrays", "init_from_base", "train"]


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
        """Mean loss of the last (up to) FINAL_LOSS_ITERATIONS iterations."""
        tail = [v for _, v in self.losses[-FINAL_LOSS_ITERATIONS:]]
        return float(np.mean(tail)) if tail else float("nan")


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


def train(config: TrainConfig, *, progress: Callable[[TrainProgress], None] | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Retrain layers ``freeze_until+1..`` of ``config.cfg`` (the task network) starting
    from the base ``config.weights``, on the dataset of the ``.data`` file ``config.data``;
    see :class:`TrainConfig` for the settings and the module docstring for the rules.
    ``progress`` is called after each iteration, ``log`` with each message (both on rank 0
    only)."""
    dist_ctx = distributed.setup(config.device)
    run = _Run(config, dist_ctx, log, progress)
    try:
        run.setup()
        run.loop()
        return run.finish()
    finally:
        run.close()
        distributed.teardown(dist_ctx)


def check_config(config: TrainConfig) -> RunOptions:
    """Every check :func:`train` makes before it decodes images and loads the model (cfg,
    settings, the dataset's list and labels, the outputs), without training or writing
    anything: raises the error ``train`` would, else returns the settings resolved from the
    cfg."""
    run = _Run(config, distributed.Dist(), None, None)
    run.prepare()
    return run.options


class _Run:
    """One training run: setup (options, data, model, optimiser), the loop, the end."""

    def __init__(self, config: TrainConfig, dist_ctx: distributed.Dist, log, progress):
        self.config, self.dist, self.progress = config, dist_ctx, progress
        self.book = Logbook(log, dist_ctx.main)
        self.note = self.book.note
        self.prefetch: _Prefetch | None = None
        self.module: nn.Module | None = None

    def close(self) -> None:
        """Drop the DDP wrapper before the process group goes: its reducer holds gloo
        threads, and destroying it after the group aborts the process (seen as
        "terminate called without an active exception" at exit)."""
        if self.prefetch is not None:
            self.prefetch.close()
        self.module = None
        gc.collect()

    # -- setup ----------------------------------------------------------------------------
    def setup(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)
        self.prepare()
        if self.state is not None:  # earlier runs' log and rows
            self.book.resume(self.paths.log, self.paths.csv, self.state["iteration"])
        self._images()
        self._model()
        self._optimiser()
        self._multi_scale()
        if self.dist.main:
            checkpoint_cfg(self.cfg, self.freeze_until, self.batch, c.lr).save(self.paths.cfg)

    def prepare(self) -> None:
        """The checks that need no model and write nothing: cfg, settings, the dataset's
        list and labels, the outputs."""
        c = self.config
        self.cfg = load_cfg(c.cfg)
        self.network = build_network(self.cfg)
        if self.network.net.channels != 3:
            raise self.cfg.net.error(f"channels={self.network.net.channels}: training reads "
                                     "RGB images, expected channels=3", "channels")
        self.loss_fn = DetectionLoss(self.network)
        self.paths = RunPaths(c.out_dir, c.cfg.stem)
        self.state = read_state(self.paths) if c.resume else None
        heads = [(target, head.layer) for head, target in zip(self.loss_fn.heads,
                                                              self.loss_fn.inputs)]
        self.options = options = resolve_options(c, self.cfg, len(self.network.layers), heads,
                                                 self.state, self.dist.world)
        if self.state is not None:
            check_resume(self.paths, self.state, options.batch, options.freeze_until, c.seed)
        self.freeze_until, self.batch = options.freeze_until, options.batch
        self.iterations, self.schedule = options.iterations, options.schedule
        self._data()
        self.base_cfg = c.base_cfg_path
        self.inputs = [c.cfg, c.weights, DataInput(c.data), self.base_cfg]
        # every rank checks (read-only), so a refused output stops all processes alike
        check_outputs(self.paths, self.inputs, c.resume, c.overwrite)

    def _data(self) -> None:
        c = self.config
        data_file = load_data_file(c.data)
        n_classes = data_file.require_classes()
        for head in self.loss_fn.heads:
            if head.classes != n_classes:
                line = self.network.layers[head.layer].section.line
                raise UsageError(f"{data_file.where('classes')}: classes = {n_classes}, but "
                                 f"{c.cfg}:{line} [yolo] layer {head.layer} has "
                                 f"classes={head.classes}")
        self.train_set = load_dataset(data_file.require("train"), n_classes, strict=c.strict)
        if self.train_set.issues:
            self.note(f"training list: {self.train_set.summary} (first problem: "
                      f"{self.train_set.issues[0]})")
        self.valid_set = None
        if c.validate and data_file.valid is not None and data_file.resolved["valid"].exists:
            self.valid_set = load_dataset(data_file.valid, n_classes, strict=c.strict)

    def _images(self) -> None:
        c, net = self.config, self.network.net
        self.images = TrainImages(self.train_set, net.width, net.height,
                                  AugmentConfig.from_cfg(self.cfg), c.augment, c.seed,
                                  strict=c.strict)
        if self.images.unreadable:
            self.note(f"training list: {len(self.images.unreadable)} images skipped that "
                      f"cannot be decoded (first: {self.images.unreadable[0]})")

    def _model(self) -> None:
        c, network = self.config, self.network
        try:
            start = start_from_base(network, c.weights, self.base_cfg, c.seed)
        except WeightsError as exc:
            if c.base_cfg is None and Path(self.base_cfg) == Path(c.cfg):  # a guess: say so
                raise WeightsError(f"{exc.args[0].split(' — ')[0]}: read with {c.cfg} because "
                                   "no .cfg is beside the weights; pass --base-cfg with the cfg "
                                   "they belong to") from None
            raise
        model, self.base_net, self.layers = start.model, start.base_net, start.layers
        self.note(f"base weights {c.weights} read with {self.base_cfg}: "
                  f"{len(self.layers.copied)} layers copied")
        for index in self.layers.reinitialised:
            self.note(f"layer {index} [{network.layers[index].section.header}] initialised "
                      f"fresh ({self.layers.reasons[index]})")
        check_frozen_copied(self.layers, self.freeze_until)
        self.start = 0
        if self.state is not None:
            self.start = load_checkpoint(model, self.paths, network, self.state, self.batch)
            self.note(f"resuming from {self.paths.last} at iteration {self.start}")
        for text in self.loss_fn.unsupported + unsupported_options(self.cfg):
            self.note(f"ignored by netsurgery's trainer: {text}")
        model.to(c.device)
        model.unfold_batchnorm()
        freeze(model, self.freeze_until)
        self.model: DarknetModel = model

    def _optimiser(self) -> None:
        c, k = self.config, self.freeze_until
        resumed = self.state is not None and self.paths.optim.is_file()
        # without augmentation an image's trunk output never changes: compute it once
        trainer = make_trainer(self.model, k, self.loss_fn.inputs, self.schedule, self.start,
                               0 if c.augment else c.feature_cache,
                               self.paths.optim if resumed else None, c.device)
        self.net, self.optimizer = trainer.net, trainer.optimizer
        if k >= 0:
            self.note(f"layers 0..{k} frozen; training layers "
                      f"{', '.join(map(str, trainer.trainable))}")
        self.module = self.net
        if self.dist.world > 1:
            self.module = nn.parallel.DistributedDataParallel(self.net)
            self.note(f"distributed training: {self.dist.world} processes, batch "
                      f"{self.batch} shared")

    def _multi_scale(self) -> None:
        c, net = self.config, self.network.net
        self.scales = MultiScale(net.width, net.height)
        if c.augment and c.multi_scale:
            self.scales = MultiScale.from_cfg(self.cfg, net.width, net.height)
        if self.scales.coef:
            w, h = self.scales.largest
            self.note(f"multi-scale training (random of the last [yolo]): every "
                      f"{self.scales.every} iterations a size up to {w}x{h}, step "
                      f"{self.scales.step}")

    # -- loop -----------------------------------------------------------------------------
    def _slots(self) -> range:
        """This process's contiguous share of each global batch."""
        world, rank = self.dist.world, self.dist.rank
        share = [len(range(r, self.batch, world)) for r in range(world)]
        return range(sum(share[:rank]), sum(share[:rank + 1]))

    def step(self, iteration: int) -> tuple[float, list[float]]:
        """One update; returns the learning rate and the batch totals (all processes):
        loss, box, obj, cls, assigned truths, IoU sum."""
        rate = self.schedule.rate(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        size = self.scales.size(iteration, self.iterations, self.config.seed)
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
        return rate, distributed.all_sum([float(result.total.detach()), parts["box"],
                                          parts["obj"], parts["cls"], result.count,
                                          result.avg_iou * result.count], self.dist)

    def loop(self) -> None:
        c, slots = self.config, self._slots()
        self.prefetch = _Prefetch(lambda i: self.images.batch(
            i, self.batch, slots, c.device, self.scales.size(i, self.iterations, c.seed)),
            thread=c.prefetch)
        self.net.train()
        t_run = time.perf_counter()
        self.timed_images, self.timed_seconds = 0, 0.0
        iteration = self.start
        while iteration < self.iterations:
            t0 = time.perf_counter()
            rate, totals = self.step(iteration)
            iteration += 1
            dt = time.perf_counter() - t0
            if iteration > self.start + 1 or self.iterations - self.start == 1:
                self.timed_images += self.batch  # the first iteration warms up
                self.timed_seconds += dt
            info = self.book.record(iteration, self.iterations, rate, totals, self.batch, dt,
                                    time.perf_counter() - t_run, self.size)
            if not math.isfinite(info.loss):
                raise NetsurgeryError(f"iteration {iteration}: the loss is {info.loss}; lower "
                                      "the learning rate (--lr) or raise burn_in")
            if self.dist.main:
                self._report(iteration, info)
        self.iteration = iteration
        self.prefetch.close()
        self.model.resize(self.scales.width, self.scales.height)  # back to the cfg's size

    def _report(self, iteration: int, info: TrainProgress) -> None:
        """Progress, log line and the files due after ``iteration`` (main process)."""
        c = self.config
        if self.progress is not None:
            self.progress(info)
        if iteration % c.log_every == 0 or iteration == self.iterations:
            self.book.messages.append(info.line())
        if iteration % c.save_every == 0 and iteration < self.iterations:
            self._checkpoint(iteration)
        if iteration % c.keep_every == 0:
            numbered = check_output(self.paths.numbered(iteration), self.inputs,
                                    overwrite=True)
            self.model.save_weights(numbered, header=header_at(self.model, iteration,
                                                               self.batch))

    def _checkpoint(self, iteration: int) -> None:
        c = self.config
        state = dict(freeze_until=self.freeze_until, seed=c.seed, augment=c.augment,
                     multi_scale=bool(self.scales.coef))
        save_checkpoint(self.model, self.paths, iteration, self.batch, self.optimizer,
                        self.book, state)

    # -- end ------------------------------------------------------------------------------
    def _verify_trunk(self) -> bool | None:
        """Layers 0..K of the final weights against the base file, bit for bit."""
        k, final = self.freeze_until, self.paths.final
        if k < 0:
            return None
        problems = compare_trunk(final, self.network, self.config.weights, self.base_net, k)
        if problems:
            raise RuntimeError(f"{final}: frozen layers changed "
                               f"({'; '.join(problems)}) — a bug in netsurgery")
        self.note(f"verified: layers 0..{k} of {final} are bit-identical to "
                  f"{self.config.weights}")
        return True

    def _validate(self) -> EvalResult | None:
        if self.valid_set is None or not len(self.valid_set):
            return None
        self.model.to("cpu")  # the weights are saved: evaluate where the images are
        evaluation = evaluate_map(self.model, self.config.data, self.config.strict)
        self.note(f"validation ({len(self.valid_set)} images of "
                  f"{self.valid_set.list_path}): mAP@0.5 = {evaluation.map:.4f}")
        return evaluation

    def finish(self) -> TrainResult:
        """Final weights (rank 0), the trunk check, validation mAP, log and chart."""
        paths, iteration = self.paths, self.iteration
        ips = self.timed_images / self.timed_seconds if self.timed_seconds > 0 else 0.0
        verified, evaluation = None, None
        main = self.dist.main
        if main:
            self.model.save_weights(paths.final, header=header_at(self.model, iteration,
                                                                  self.batch))
            self._checkpoint(iteration)
            verified = self._verify_trunk()
            evaluation = self._validate()
            done = iteration - self.start
            self.note(f"trained {done} iterations ({done * self.batch} images) at {ips:.1f} "
                      f"images/s; wrote {paths.final}")
            self.book.chart(paths.chart)
            self.book.write_log(paths.log)
        distributed.barrier(self.dist)
        return TrainResult(
            out_dir=paths.out, cfg_path=paths.cfg if main else None,
            final_weights=paths.final if main else None,
            last_weights=paths.last if main else None,
            log_csv=paths.csv if main else None, chart=paths.chart if main else None,
            start_iteration=self.start, iterations=iteration, seen=iteration * self.batch,
            batch=self.batch, freeze_until=self.freeze_until, losses=self.book.losses,
            layers=self.layers, images_per_sec=ips, trunk_verified=verified,
            evaluation=evaluation, messages=self.book.messages, rank=self.dist.rank,
            world_size=self.dist.world)
