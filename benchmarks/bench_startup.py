"""Start-up of a verb that needs no model: ``python -m netsurgery info cfg/yolov3.cfg``, as
it runs (no torch), against the same command in an interpreter that imports torch first
(what every verb paid before issue 14). Fresh interpreters in turn, medians."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import OtherLoad

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["-m", "netsurgery", "info", "cfg/yolov3.cfg"]
WITH_TORCH = ["-c", "import sys, runpy, torch; sys.argv = ['netsurgery', *sys.argv[1:]]; "
              "runpy.run_module('netsurgery', run_name='__main__')", *COMMAND[2:]]


def once(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    repeat = parser.parse_args().repeat
    times: dict[str, list[float]] = {"info (no torch)": [], "info after import torch": []}
    with OtherLoad() as load:
        for _ in range(repeat):
            times["info (no torch)"].append(once(COMMAND))
            times["info after import torch"].append(once(WITH_TORCH))
    for name, values in times.items():
        print(f"{name:26s} median {statistics.median(values):.3f} s, best {min(values):.3f} s")
    ratio = statistics.median(times["info (no torch)"]) / \
        statistics.median(times["info after import torch"])
    print(f"ratio (median): {ratio:.3f}")
    print(load.line())


if __name__ == "__main__":
    main()
