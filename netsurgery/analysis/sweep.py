"""The k sweep (paper Fig. 5): for each share point k retrain the tail from k+1 with the trunk
frozen, evaluate it, and record what sharing up to k saves — so a user can pick k.

Every input is checked before the first k trains (cfgs, base weights, the trunks 0..k of base
and task, input sizes, the dataset, each k's training settings). Each k writes
``OUT/k_<k>/result.json`` when it is complete, with the training settings it was made with;
a re-run reuses a k whose recorded settings equal this run's, and refuses one whose settings
differ unless ``overwrite`` (then it is retrained). A k that fails before its first checkpoint
leaves no folder behind. ``k = -1`` is the end-to-end reference (nothing frozen, nothing
shared).
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

from netsurgery.darknet.network import Network
from netsurgery.errors import UsageError
from netsurgery.fileio import atomic_write_bytes, atomic_write_text
from netsurgery.jsonout import write_document

from .cost import share_cost

END_TO_END = -1
RESULT_FORMAT = "netsurgery-sweep-result/2"
TIMING_REPEATS = 20  # as `netsurgery time`: interleaved rounds, medians and quartiles


@dataclass
class SweepPoint:
    """One k of the sweep. Times are ms per image, batch 1: the median, and the quartiles
    (25 %, 75 %) of the timed rounds as the spread."""

    k: int
    map: float
    map_present: float
    params_fraction: float  # of one detector's params in layers 0..k (0 for end-to-end)
    bflops_fraction: float
    params_saved_per_extra: int
    bflops_saved_per_extra: float
    time_merged_ms: float | None  # base + task merged at k, all heads
    time_separate_ms: float | None  # base alone + task alone
    iterations: int
    weights: str
    time_merged_quartiles_ms: list[float] | None = None
    time_separate_quartiles_ms: list[float] | None = None
    timing_repeats: int = 0


@dataclass
class SharingTiming:
    """Base + task merged at k against the two run separately, from interleaved rounds."""

    merged_ms: list[float] = field(default_factory=list)  # per round
    separate_ms: list[float] = field(default_factory=list)  # per round: each head alone, summed

    @staticmethod
    def quartiles(runs: Sequence[float]) -> list[float]:
        if len(runs) < 2:
            return [runs[0], runs[0]] if runs else []
        q = statistics.quantiles(runs, n=4)
        return [q[0], q[2]]


def merged_model(base_cfg, base_weights, task_cfg, task_weights, k: int):
    """Base + task merged at ``k``, built in memory and loaded for inference, and its heads."""
    from netsurgery.surgery.merge import TaskInput, merge
    from netsurgery.surgery.weighted import load_weighted

    merged, heads = merge(load_weighted(base_cfg, base_weights),
                          [TaskInput("task", load_weighted(task_cfg, task_weights), k)])
    return merged.model(inference=True), heads


def time_sharing(base_cfg, base_weights, task_cfg, task_weights, k: int,
                 repeats: int = TIMING_REPEATS) -> SharingTiming:
    """Time of base + task merged at ``k`` against the two run separately, measured as
    ``netsurgery time`` does (:func:`netsurgery.detection.timing.time_merged`: each head of the
    merged network alone is the same layers as its own network; the candidates run one after
    the other in every round, so machine load biases them alike)."""
    from netsurgery.detection.timing import time_merged

    model, heads = merged_model(base_cfg, base_weights, task_cfg, task_weights, k)
    timing = time_merged(model, heads, repeats)
    separate = [sum(rounds) for rounds in zip(*(t.runs_ms for t in timing.heads))]
    return SharingTiming(list(timing.merged.runs_ms), separate)


def time_merged_vs_separate(base_cfg, base_weights, task_cfg, task_weights, k: int,
                            repeats: int = TIMING_REPEATS) -> tuple[float, float]:
    """Median inference time (ms, batch 1) of base + task merged at ``k`` and of the two run
    separately (:func:`time_sharing`)."""
    timing = time_sharing(base_cfg, base_weights, task_cfg, task_weights, k, repeats)
    return statistics.median(timing.merged_ms), statistics.median(timing.separate_ms)


@dataclass
class SweepPlan:
    """What a sweep will do for one k: where, with which settings, and whether a finished
    result can be reused."""

    k: int
    folder: Path
    config: object  # TrainConfig
    settings: dict
    reuse: SweepPoint | None = None
    resume: bool = False


def _folder(out: Path, k: int) -> Path:
    return out / ("end_to_end" if k == END_TO_END else f"k_{k}")


def check_inputs(base_cfg, base_weights, task_cfg, ks: Sequence[int]) -> Network:
    """Everything about the networks a sweep needs, before anything trains: the base cfg and
    its weights, the task cfg, every k inside the base, and the merge each k will need (the
    trunks 0..k of base and task the same layers at the same input size), done on the
    structure alone. Returns the base network."""
    from netsurgery.surgery.merge import TaskInput, merge
    from netsurgery.surgery.weighted import load_weighted

    base = load_weighted(base_cfg)
    load_weighted(base_cfg, base_weights)  # the weights must fit the base cfg
    task = load_weighted(task_cfg)
    base_net = base.network
    n = len(base_net.layers)
    for k in ks:
        if not 0 <= k < n - 1:
            raise UsageError(f"k={k}: expected a layer index in 0..{n - 2} of {base_cfg}")
    for k in ks:
        merge(base, [TaskInput("task", task, k)])  # no arrays: layers and shapes only
    return base_net


def plan_sweep(base_cfg, base_weights, task_cfg, data, todo: Sequence[int], out: Path,
               overwrite: bool, train_options: dict) -> list[SweepPlan]:
    """Each k's training settings checked as training will check them, and compared with
    what an earlier run in ``out`` recorded."""
    from netsurgery.training.config import TrainConfig
    from netsurgery.training.train import check_config

    plans = []
    for k in todo:
        folder = _folder(out, k)
        config = TrainConfig(task_cfg, base_weights, data, folder, freeze_until=k,
                             base_cfg=base_cfg, validate=False, overwrite=True,
                             **train_options)
        options = check_config(config)
        settings = {**config.settings(), "freeze_until": options.freeze_until,
                    "iterations": options.iterations, "batch": options.batch}
        plan = SweepPlan(k, folder, config, settings)
        _compare_earlier(plan, overwrite)
        plans.append(plan)
    return plans


def _compare_earlier(plan: SweepPlan, overwrite: bool) -> None:
    """Reuse a finished k made with the same settings, resume an interrupted one; refuse
    (or, with ``overwrite``, retrain) when the recorded settings differ."""
    done = plan.folder / "result.json"
    started = plan.folder / "settings.json"
    recorded_in = done if done.exists() else started if started.exists() else None
    recorded, point = _read_recorded(recorded_in) if recorded_in else (None, None)
    if recorded is None:
        if overwrite or not (recorded_in or any(plan.folder.glob("*_state.json"))):
            return
        raise UsageError(f"{plan.folder}: holds a training run without recorded sweep "
                         "settings; pass --overwrite to retrain it (or use another --out)")
    difference = _first_difference(recorded, plan.settings)
    if difference is None:
        if point is not None:
            plan.reuse = point
        else:
            plan.resume = any(plan.folder.glob("*_state.json"))
        return
    if not overwrite:
        raise UsageError(f"{recorded_in}: k={plan.k} was trained with {difference}; pass "
                         "--overwrite to retrain it with this run's settings (or use another "
                         "--out)")


def _read_recorded(path: Path) -> tuple[dict | None, SweepPoint | None]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        return None, None
    point = None
    if path.name == "result.json":
        try:
            names = {f.name for f in fields(SweepPoint)}
            point = SweepPoint(**{k: v for k, v in data["point"].items() if k in names})
        except (KeyError, TypeError, AttributeError):
            point = None  # damaged: the k is trained again
    return data["settings"], point


def _first_difference(recorded: dict, wanted: dict) -> str | None:
    for key in sorted(set(recorded) | set(wanted)):
        if recorded.get(key) != wanted.get(key):
            return f"{key}={recorded.get(key)}, this run asks for {key}={wanted.get(key)}"
    return None


def run_sweep(base_cfg: str, base_weights: str, task_cfg: str, data: str, ks: Sequence[int],
              out_dir: str, iterations: int | None = None, end_to_end: bool = True,
              batch: int | None = None, timing_repeats: int = TIMING_REPEATS,
              augment: bool = True, seed: int = 0, multi_scale: bool = True,
              overwrite: bool = False,
              log: Callable[[str], None] = lambda m: None) -> list[SweepPoint]:
    """Retrain, evaluate and measure for every k (every input checked first); reuses each k
    already finished with the same settings."""
    if timing_repeats < 1:
        raise UsageError(f"timing repeats {timing_repeats}: expected at least 1")
    base_net = check_inputs(base_cfg, base_weights, task_cfg, ks)
    out = Path(out_dir)
    todo = list(ks) + ([END_TO_END] if end_to_end else [])
    plans = plan_sweep(base_cfg, base_weights, task_cfg, data, todo, out, overwrite,
                       dict(iterations=iterations, batch=batch, augment=augment, seed=seed,
                            multi_scale=multi_scale))
    created_out = not out.exists()
    points: list[SweepPoint] = []
    try:
        for plan in plans:
            if plan.reuse is not None:
                log(f"k={plan.k}: finished before with the same settings, reused "
                    f"({plan.folder / 'result.json'})")
                points.append(plan.reuse)
                continue
            points.append(_run_point(plan, base_net, base_cfg, base_weights, data,
                                     timing_repeats, log))
    finally:
        if created_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing finished: leave no empty folder
    write_outputs(points, out)
    return points


def _run_point(plan: SweepPlan, base_net: Network, base_cfg, base_weights, data,
               timing_repeats: int, log: Callable[[str], None]) -> SweepPoint:
    """Train, evaluate and time one k; on failure, remove what it wrote unless a checkpoint
    can be resumed."""
    from dataclasses import replace

    from netsurgery.darknet.model import load_model
    from netsurgery.detection.evaluate import evaluate_model
    from netsurgery.training.train import train

    k, folder = plan.k, plan.folder
    created = not folder.exists()
    log(f"k={k}: training layers {k + 1}.. ({'nothing frozen' if k < 0 else 'trunk frozen'})"
        + (", resuming" if plan.resume else ""))
    try:
        (folder / "result.json").unlink(missing_ok=True)  # stale until this k is done again
        atomic_write_text(folder / "settings.json",
                          json.dumps({"settings": plan.settings}, indent=1) + "\n")
        result = train(replace(plan.config, resume=plan.resume, overwrite=not plan.resume),
                       log=log)
        model = load_model(result.cfg_path, result.final_weights, inference=True)
        ev = evaluate_model(model, data)
        point = SweepPoint(k, ev.map, ev.map_present, 0.0, 0.0, 0, 0.0, None, None,
                           result.iterations, str(result.final_weights))
        if k != END_TO_END:
            _add_sharing(point, base_net, base_cfg, base_weights, result, timing_repeats)
    except BaseException:
        if created and folder.is_dir() and not any(folder.glob("*_state.json")):
            shutil.rmtree(folder)  # nothing to resume: leave no folder behind
        raise
    atomic_write_text(folder / "result.json", json.dumps(
        {"format": RESULT_FORMAT, "settings": plan.settings, "point": asdict(point)},
        indent=1) + "\n")
    log(f"k={k}: mAP@0.5 {point.map * 100:.2f} %, shares {point.params_fraction:.3f} params "
        f"/ {point.bflops_fraction:.3f} FLOPs")
    return point


def _add_sharing(point: SweepPoint, base_net: Network, base_cfg, base_weights, result,
                 repeats: int) -> None:
    """What sharing up to ``point.k`` saves: the cost fractions and the measured times."""
    share = share_cost(base_net, point.k)
    point.params_fraction, point.bflops_fraction = share.params_fraction, share.bflops_fraction
    point.params_saved_per_extra = share.params_shared
    point.bflops_saved_per_extra = share.bflops_shared
    timing = time_sharing(base_cfg, base_weights, result.cfg_path, result.final_weights,
                          point.k, repeats)
    point.time_merged_ms = statistics.median(timing.merged_ms)
    point.time_separate_ms = statistics.median(timing.separate_ms)
    point.time_merged_quartiles_ms = SharingTiming.quartiles(timing.merged_ms)
    point.time_separate_quartiles_ms = SharingTiming.quartiles(timing.separate_ms)
    point.timing_repeats = repeats


def write_outputs(points: Sequence[SweepPoint], out: Path) -> None:
    """``sweep.csv``, ``sweep.json`` and ``sweep.png`` in ``out``."""
    buf = io.StringIO()
    fields_ = list(asdict(points[0]).keys()) if points else []
    writer = csv.DictWriter(buf, fieldnames=fields_)
    writer.writeheader()
    for p in points:
        writer.writerow(asdict(p))
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    write_document(out / "sweep.json", "sweep", {"points": [asdict(p) for p in points]})
    plot_sweep(points, out / "sweep.png")


def plot_sweep(points: Sequence[SweepPoint], path: Path) -> None:
    """mAP against k with the end-to-end result as reference line, savings on a second axis;
    the legend below the axes, clear of the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shared = sorted((p for p in points if p.k >= 0), key=lambda p: p.k)
    e2e = [p for p in points if p.k == END_TO_END]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    ks = [p.k for p in shared]
    ax.plot(ks, [p.map * 100 for p in shared], "o-", color="tab:blue",
            label="mAP@0.5, tail from k+1")
    if e2e:
        ax.axhline(e2e[0].map * 100, color="tab:blue", ls="--", lw=1,
                   label="end-to-end (nothing frozen)")
    ax.set_xlabel("share-until layer k (Darknet index)")
    ax.set_ylabel("mAP@0.5 (%)")
    top = max([p.map * 100 for p in points] + [1.0])
    ax.set_ylim(0, min(100.0, top * 1.15))  # mAP is never negative
    ax2 = ax.twinx()
    ax2.plot(ks, [p.params_fraction * 100 for p in shared], "s:", color="tab:green",
             label="params saved per extra detector")
    ax2.plot(ks, [p.bflops_fraction * 100 for p in shared], "^:", color="tab:orange",
             label="FLOPs saved per extra detector")
    ax2.set_ylabel("saved per extra detector (%)")
    ax2.set_ylim(0, 100)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.set_title("Accuracy against sharing")
    ax.grid(alpha=0.3)
    fig.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, ncol=2,
               loc="lower center", frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # the bottom tenth holds the legend
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _time_cell(median: float | None, quartiles: list[float] | None, width: int) -> str:
    if median is None:
        return f"{'-':>{width}}"
    spread = f" ({quartiles[0]:.1f}-{quartiles[1]:.1f})" if quartiles else ""
    return f"{median:.1f}{spread}".rjust(width)


def format_sweep(points: Sequence[SweepPoint]) -> str:
    """The sweep as a table: times are medians with the quartiles of the timed rounds."""
    lines = ["    k  iterations  mAP@0.5  params shared  FLOPs shared  "
             "    merged ms (25-75 %)    separate ms (25-75 %)"]
    for p in sorted(points, key=lambda p: (p.k < 0, p.k)):
        name = "e2e" if p.k < 0 else str(p.k)
        lines.append(f"{name:>5}  {p.iterations:10d}  {p.map * 100:6.2f}%  "
                     f"{p.params_fraction:13.3f}  {p.bflops_fraction:12.3f}  "
                     f"{_time_cell(p.time_merged_ms, p.time_merged_quartiles_ms, 23)}  "
                     f"{_time_cell(p.time_separate_ms, p.time_separate_quartiles_ms, 23)}")
    repeats = {p.timing_repeats for p in points if p.timing_repeats}
    if repeats:
        lines.append(f"times: ms per image, batch 1, median (quartiles) of "
                     f"{'/'.join(map(str, sorted(repeats)))} interleaved rounds")
    return "\n".join(lines)
