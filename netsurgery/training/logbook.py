"""What a run reports: a progress line per iteration (:class:`TrainProgress`), the messages
of ``train.log``, the rows of ``train_log.csv`` and the loss chart
(:func:`netsurgery.analysis.plots.plot_loss`)."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from netsurgery.fileio import atomic_write_text

CSV_FIELDS = ("iteration", "loss", "box", "obj", "cls", "avg_iou", "lr", "images_per_sec",
              "seconds", "input")


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


class Logbook:
    """The messages (``train.log``; each also given to ``log`` on the main process) and the
    per-iteration rows (``train_log.csv``) of a run, earlier runs of a resumed one included."""

    def __init__(self, log: Callable[[str], None] | None, main: bool):
        self.log, self.main = log, main
        self.messages: list[str] = []
        self.rows: list[dict] = []

    def note(self, text: str) -> None:
        """A message for the log file and the ``log`` callback."""
        self.messages.append(text)
        if self.log is not None and self.main:
            self.log(text)

    def resume(self, log_path: Path, csv_path: Path, upto: int) -> None:
        """Take the earlier runs' messages (before this run's) and rows up to ``upto``."""
        if log_path.is_file():
            self.messages[:0] = log_path.read_text().splitlines()
        self.rows = read_csv_rows(csv_path, upto)

    def record(self, iteration: int, iterations: int, rate: float, totals: Sequence[float],
               batch: int, dt: float, seconds: float, size: tuple[int, int]) -> TrainProgress:
        """The progress of one iteration from the batch ``totals`` (loss, box, obj, cls,
        assigned truths, IoU sum), kept as a CSV row."""
        count = totals[4]
        info = TrainProgress(iteration, iterations, totals[0] / batch,
                             {k: v / batch for k, v in zip(("box", "obj", "cls"), totals[1:4])},
                             rate, batch / dt if dt > 0 else float("inf"),
                             totals[5] / count if count else 0.0, seconds, size)
        self.rows.append({"iteration": iteration, "loss": f"{info.loss:.6g}",
                          **{k: f"{v:.6g}" for k, v in info.parts.items()},
                          "avg_iou": f"{info.avg_iou:.4f}", "lr": f"{rate:.6g}",
                          "images_per_sec": f"{info.images_per_sec:.2f}",
                          "seconds": f"{seconds:.2f}",
                          "input": f"{size[0]}x{size[1]}"})
        return info

    @property
    def losses(self) -> list[tuple[int, float]]:
        """(iteration, loss per image) of every row."""
        return [(int(r["iteration"]), float(r["loss"])) for r in self.rows]

    def write(self, csv_path: Path, log_path: Path) -> None:
        """``train_log.csv`` and ``train.log``."""
        write_csv(csv_path, self.rows)
        self.write_log(log_path)

    def write_log(self, log_path: Path) -> None:
        atomic_write_text(log_path, "\n".join(self.messages) + "\n")

    def chart(self, path: Path) -> None:
        """The loss chart of every row."""
        from netsurgery.analysis.plots import plot_loss

        its, loss = zip(*self.losses) if self.rows else ((), ())
        plot_loss(its, loss, path)


def read_csv_rows(path: Path, upto: int) -> list[dict]:
    """The rows of a ``train_log.csv`` up to iteration ``upto`` (none when it is missing)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle)]
    return [row for row in rows if int(row["iteration"]) <= upto]


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
