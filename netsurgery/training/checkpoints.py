"""Checkpoints and resume: the files a run writes into its folder (:class:`RunPaths`), the
cfg beside them, the checkpoint (weights, optimiser, log, then the state file that marks it
complete) and the checks that a resumed run continues the same one."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from netsurgery.darknet.cfg import Cfg
from netsurgery.darknet.model import DarknetModel
from netsurgery.darknet.network import Network
from netsurgery.darknet.weights import WeightsHeader, load_weights
from netsurgery.errors import UsageError
from netsurgery.fileio import atomic_open, atomic_write_text, check_output

from .logbook import Logbook


@dataclass
class RunPaths:
    """The files of a run in ``out`` (``stem``: the task cfg's file stem)."""

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


def header_at(model: DarknetModel, iteration: int, batch: int) -> WeightsHeader:
    """The model's header with ``seen`` = the images trained on after ``iteration``, so that
    Darknet resumes at the same iteration."""
    h = model.header
    return WeightsHeader(h.major, h.minor, h.revision, iteration * batch)


def save_checkpoint(model: DarknetModel, paths: RunPaths, iteration: int, batch: int,
                    optimizer, logbook: Logbook, state_extra: dict) -> None:
    """Weights, optimiser, log, then the state file that marks the checkpoint complete."""
    model.save_weights(paths.last, header=header_at(model, iteration, batch))
    with atomic_open(paths.optim, "wb") as handle:
        torch.save(optimizer.state_dict(), handle)
    logbook.write(paths.csv, paths.log)
    state = {"version": 1, "iteration": iteration, "batch": batch,
             "weights": paths.last.name, **state_extra}
    atomic_write_text(paths.state, json.dumps(state, indent=1) + "\n")


def read_state(paths: RunPaths) -> dict:
    """The state file of the run in ``paths.out`` (checked), for ``resume``."""
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


def check_resume(paths: RunPaths, state: dict, batch: int, freeze_until: int,
                 seed: int) -> None:
    """A resumed run must keep the settings that decide which images each iteration sees."""
    for key, value in (("batch", batch), ("freeze_until", freeze_until), ("seed", seed)):
        if state[key] != value:
            raise UsageError(f"{paths.state}: the run was started with {key}="
                             f"{state[key]}, resume asks for {value}; resume with "
                             "the same value")


def load_checkpoint(model: DarknetModel, paths: RunPaths, network: Network, state: dict,
                    batch: int) -> int:
    """Load the checkpoint's weights into ``model``; returns the iteration it reached."""
    wf = load_weights(paths.last, network.layers, allow_partial=False)
    expected = state["iteration"] * batch
    if wf.header.seen != expected:
        raise UsageError(f"{paths.last}: header says {wf.header.seen} images seen, "
                         f"{paths.state} says {expected}: the checkpoint and its "
                         "state do not belong together")
    model.load_weights(wf)
    return state["iteration"]


def check_outputs(paths: RunPaths, inputs: list, resume: bool, overwrite: bool) -> None:
    """Refuse to write over an input, and over an earlier run unless resuming it or asked
    to overwrite."""
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
