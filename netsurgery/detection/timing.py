"""Inference time of a network, and of a merged network against its heads run separately —
the measured side of what ``info --heads`` predicts from FLOPs.

A head of a merged network run on its own (:class:`MergedModel` with ``heads=[name]``)
executes exactly the layers of its original network: the shared trunk 0..k and its tail (the
base head: the base network). So "separate" is measured on the merged file itself, as the sum
of each head alone, without the original files; "merged" runs all heads with the trunk once.

Timings are medians over ``repeat`` rounds after one warm-up, batch 1, in the fast inference
mode. Within a round the candidates run one after the other (each head alone, then all), so
that a change in machine load biases them alike.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from netsurgery.analysis.cost import merge_savings
from netsurgery.darknet.model import DarknetModel
from netsurgery.darknet.network import Network
from netsurgery.errors import UsageError
from netsurgery.surgery.heads import MergedHeads
from netsurgery.surgery.multihead import MergedModel

from .runner import Runner


@dataclass
class Timing:
    """Milliseconds per image (batch 1) of one candidate, every round kept."""

    name: str
    runs_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms)


@dataclass
class MergedTiming:
    """A merged network: each head alone, their sum, all heads at once, and the FLOP ratio
    the merge predicts."""

    heads: list[Timing]
    merged: Timing
    bflops_ratio: float  # merged / separate, from the layer FLOPs

    @property
    def separate_ms(self) -> float:
        return sum(t.median_ms for t in self.heads)

    @property
    def ratio(self) -> float:
        """Measured merged / separate time."""
        return self.merged.median_ms / self.separate_ms


def input_of(network: Network) -> torch.Tensor:
    """The random image (fixed seed) every timing runs on."""
    net = network.net
    return torch.rand((1, net.channels, net.height, net.width),
                      generator=torch.Generator().manual_seed(0))


def _rounds(candidates: Sequence[tuple[str, Callable[[], object]]], repeat: int,
            progress: Callable[[int, int], None] | None) -> list[Timing]:
    if repeat < 1:
        raise UsageError(f"repeat={repeat}: expected at least 1 timed run")
    timings = [Timing(name) for name, _ in candidates]
    with torch.inference_mode():
        for _, fn in candidates:  # warm-up: first-call allocations and kernel selection
            fn()
        for r in range(repeat):
            for timing, (_, fn) in zip(timings, candidates):
                t0 = time.perf_counter()
                fn()
                timing.runs_ms.append((time.perf_counter() - t0) * 1000)
            if progress is not None:
                progress(r + 1, repeat)
    return timings


def time_model(model: Runner, repeat: int = 20,
               progress: Callable[[int, int], None] | None = None) -> Timing:
    """Median time of ``model`` (our model, or an onnxruntime runner) on one random image
    of its input size."""
    x = input_of(model.network)
    return _rounds([("network", lambda: model(x))], repeat, progress)[0]


def time_heads(alone: dict[str, Callable[[], object]], together: Callable[[], object],
               bflops_ratio: float, repeat: int = 20,
               progress: Callable[[int, int], None] | None = None) -> MergedTiming:
    """Each head alone (name → call) and all heads at once, in interleaved rounds."""
    timings = _rounds([*alone.items(), ("merged", together)], repeat, progress)
    return MergedTiming(timings[:-1], timings[-1], bflops_ratio)


def time_merged(model: DarknetModel, heads: MergedHeads, repeat: int = 20,
                progress: Callable[[int, int], None] | None = None) -> MergedTiming:
    """Each head alone and all heads together, interleaved (see the module docstring)."""
    merged = MergedModel(model, heads)
    x = input_of(model.network)
    alone = {name: (lambda name=name: merged(x, [name])) for name in merged.head_names}
    return time_heads(alone, lambda: merged(x), merge_savings(model.network, heads).bflops_ratio,
                      repeat, progress)


def format_timing(timing: Timing | MergedTiming) -> str:
    if isinstance(timing, Timing):
        return (f"{timing.median_ms:.2f} ms per image (median of {len(timing.runs_ms)}, "
                f"batch 1): {1000 / timing.median_ms:.1f} images/s")
    lines = ["  run                  ms per image (median, batch 1)"]
    for t in timing.heads:
        lines.append(f"  {t.name + ' alone':<20} {t.median_ms:>10.2f}")
    lines.append(f"  {'separate (sum)':<20} {timing.separate_ms:>10.2f}")
    lines.append(f"  {'merged, all heads':<20} {timing.merged.median_ms:>10.2f}")
    lines.append(f"  merged / separate: time {timing.ratio:.3f}, FLOPs {timing.bflops_ratio:.3f}")
    return "\n".join(lines)


@dataclass
class GatedTiming:
    """A gated merged network on real images: mean ms per image with and without the gates,
    per round, and how many images each gate let through."""

    images: int
    gated_ms: list[float] = field(default_factory=list)  # per round: mean over the images
    ungated_ms: list[float] = field(default_factory=list)
    passed: dict[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Measured gated / ungated time (medians over rounds)."""
        return statistics.median(self.gated_ms) / statistics.median(self.ungated_ms)


def time_gated(model: DarknetModel, heads: MergedHeads, images: Sequence[torch.Tensor],
               repeat: int = 3,
               progress: Callable[[int, int], None] | None = None) -> GatedTiming:
    """Every head with the gates against every head without them, on ``images`` (each a
    preprocessed (1, 3, H, W) batch of one), image by image alternately so machine load biases
    both alike. What a gate saves depends on the images, so this needs real ones."""
    if repeat < 1:
        raise UsageError(f"repeat={repeat}: expected at least 1 timed round")
    if not images:
        raise UsageError("timing with gates needs at least one image")
    merged = MergedModel(model, heads)
    result = GatedTiming(len(images))
    with torch.inference_mode():
        merged.run(images[0])  # warm-up: both paths' first-call allocations
        merged.run(images[0], gates=False)
        for r in range(repeat):
            spent = {True: 0.0, False: 0.0}
            for i, x in enumerate(images):
                for gates in ((True, False) if (r + i) % 2 == 0 else (False, True)):
                    t0 = time.perf_counter()
                    runs = merged.run(x, gates=gates)
                    spent[gates] += time.perf_counter() - t0
                    if gates and r == 0:
                        for name, run in runs.items():
                            ran = len(x) if run.images is None else len(run.images)
                            result.passed[name] = result.passed.get(name, 0) + ran
            result.gated_ms.append(spent[True] * 1000 / len(images))
            result.ungated_ms.append(spent[False] * 1000 / len(images))
            if progress is not None:
                progress(r + 1, repeat)
    return result


def format_gated(timing: GatedTiming) -> str:
    lines = [f"  on {timing.images} images      ms per image (median of "
             f"{len(timing.gated_ms)} rounds, batch 1)",
             f"  {'without gates':<20} {statistics.median(timing.ungated_ms):>10.2f}",
             f"  {'with gates':<20} {statistics.median(timing.gated_ms):>10.2f}",
             f"  gated / ungated: time {timing.ratio:.3f}"]
    for name, n in timing.passed.items():
        if n != timing.images:
            lines.append(f"  head '{name}' ran on {n} of {timing.images} images")
    return "\n".join(lines)


__all__ = ["GatedTiming", "MergedTiming", "Timing", "format_gated", "format_timing",
           "input_of", "time_gated", "time_heads", "time_merged", "time_model"]
