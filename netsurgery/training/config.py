"""What a training run is asked to do (:class:`TrainConfig`), and the settings it resolves
from the cfg where the config leaves them open (:func:`resolve_options`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

from netsurgery.darknet.cfg import Cfg, Section
from netsurgery.errors import UsageError

from .schedule import Schedule

CPU_BATCH_MAX = 16  # default batch cap: cfg batches are sized for GPUs
CPU_BATCH_DEFAULT = 8  # for inference cfgs (batch=1)
FEATURE_CACHE_BYTES = 1 << 30  # frozen-trunk outputs kept per image (without augmentation)

_PATHS = ("cfg", "weights", "data", "out_dir", "base_cfg")


@dataclass
class TrainConfig:
    """One training run (see :mod:`netsurgery.training.train` for the rules).

    ``cfg`` is the task network, ``weights`` the base network's weights, ``data`` the task's
    ``.data`` file; the run writes into ``out_dir``. ``None`` means "from the cfg":
    ``freeze_until`` (the cfg's ``stopbackward`` layer, else -1 = train everything),
    ``iterations`` (``max_batches``), ``batch`` (Darknet's mini-batch, at most 16), ``lr``
    (``learning_rate``), ``base_cfg`` (the ``.cfg`` beside the weights, else ``cfg``).
    ``resume`` continues the run in ``out_dir`` (to ``iterations`` in total); ``overwrite``
    starts over in an ``out_dir`` that holds one. ``multi_scale=False`` ignores the cfg's
    ``random`` (multi-scale needs ``augment``). ``strict`` stops at the first bad label
    instead of skipping the image. ``validate``: mAP on the ``valid`` list at the end.
    ``save_every``/``keep_every``: iterations between ``<stem>_last.weights`` /
    ``<stem>_<iteration>.weights``; ``log_every``: between progress lines in ``train.log``.
    ``feature_cache``: bytes of frozen-trunk outputs kept per image when ``augment`` is off.
    ``prefetch``: prepare the next batch in a thread while the current one trains (the
    batches are the same either way)."""

    cfg: Path
    weights: Path
    data: Path
    out_dir: Path
    freeze_until: int | None = None
    iterations: int | None = None
    batch: int | None = None
    lr: float | None = None
    base_cfg: Path | None = None
    resume: bool = False
    overwrite: bool = False
    augment: bool = True
    multi_scale: bool = True
    seed: int = 0
    strict: bool = False
    validate: bool = True
    device: str = "cpu"
    save_every: int = 100
    keep_every: int = 1000
    log_every: int = 10
    feature_cache: int = FEATURE_CACHE_BYTES
    prefetch: bool = True

    def __post_init__(self) -> None:
        for name in _PATHS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(os.fspath(value)))
        for name in ("save_every", "keep_every", "log_every"):
            value = getattr(self, name)
            if value < 1:
                raise UsageError(f"{name}={value}: expected a positive number of iterations")

    @property
    def base_cfg_path(self) -> Path:
        """The cfg the base weights are read with."""
        return self.base_cfg or default_base_cfg(self.weights, self.cfg)

    def settings(self) -> dict[str, object]:
        """The fields that decide the trained weights, as JSON values (paths resolved): two
        runs with equal settings train the same network."""
        out: dict[str, object] = {}
        for f in fields(self):
            if f.name in ("out_dir", "resume", "overwrite", "validate", "device", "save_every",
                          "keep_every", "log_every", "feature_cache", "prefetch"):
                continue
            value = getattr(self, f.name)
            out[f.name] = str(Path(value).resolve()) if isinstance(value, Path) else value
        out["base_cfg"] = str(self.base_cfg_path.resolve())
        return out


@dataclass(frozen=True)
class RunOptions:
    """The settings a run uses, with every ``None`` of its config resolved."""

    freeze_until: int
    batch: int
    iterations: int
    schedule: Schedule


def default_base_cfg(weights: str | os.PathLike, task_cfg: str | os.PathLike) -> Path:
    """The cfg the base weights belong to: ``<stem>.cfg`` beside the weights, else the task
    cfg."""
    beside = Path(weights).with_suffix(".cfg")
    return beside if beside.is_file() else Path(task_cfg)


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


def resolve_options(config: TrainConfig, cfg: Cfg, n_layers: int,
                    heads: Sequence[tuple[int, int]], state: dict | None,
                    world: int) -> RunOptions:
    """Fill what ``config`` leaves open from the resumed ``state`` or the cfg, and check it:
    ``heads`` are the (conv before [yolo], [yolo]) layer pairs, ``world`` the number of
    processes."""
    freeze_until = config.freeze_until
    if freeze_until is None:
        freeze_until = state["freeze_until"] if state else freeze_from_cfg(cfg)
        freeze_until = -1 if freeze_until is None else freeze_until
    if not -1 <= freeze_until < n_layers:
        raise UsageError(f"freeze-until {freeze_until}: expected -1 (train everything) "
                         f".. {n_layers - 1} (the last layer of {config.cfg})")
    for target, head in heads:
        if target <= freeze_until:
            raise UsageError(f"freeze-until {freeze_until} freezes layer {target}, the "
                             f"conv before the [yolo] layer {head}: nothing left to "
                             "train for that head; choose a smaller K")
    batch = config.batch
    if batch is None:
        batch = state["batch"] if state else default_batch(cfg.net)
    if batch < world:
        raise UsageError(f"batch {batch} is smaller than the number of processes "
                         f"({world}): every process needs at least one image")
    schedule = Schedule.from_cfg(cfg.net, config.lr)
    iterations = schedule.max_batches if config.iterations is None else config.iterations
    if iterations < 1:
        raise UsageError(f"iterations={iterations}: expected at least 1 (set "
                         "--iterations or max_batches in [net])")
    return RunOptions(freeze_until, batch, iterations, schedule)
