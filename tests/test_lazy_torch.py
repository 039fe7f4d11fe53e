"""The verbs that need no model run without importing torch (issue 14): each runs in a fresh
interpreter that then lists the torch modules it loaded."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs ``python -m netsurgery ARGS`` and prints which torch modules got loaded.
RUNNER = """
import runpy, sys
sys.argv = ["netsurgery"] + sys.argv[1:]
code = 0
try:
    runpy.run_module("netsurgery", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("TORCH MODULES:", sorted(m for m in sys.modules if m.split(".")[0].startswith("torch")))
sys.exit(code)
"""


def run_verb(args: list[str], cwd: Path) -> list[str]:
    """Run a verb; returns the torch modules it imported (asserting it succeeded)."""
    proc = subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=cwd, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("TORCH MODULES:"), proc.stdout
    return ast.literal_eval(last.split(":", 1)[1].strip())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, request):
    """A synthetic dataset (for task-cfg --data) and a network merged with itself."""
    from conftest import shared_path

    cfg = shared_path("darknet-cfg", "yolov3-tiny.cfg")
    weights = shared_path("models", "yolov3-tiny.weights")
    root = tmp_path_factory.mktemp("lazy")
    from netsurgery.cli.app import run

    assert run(["make-dataset", "shapes", "--out", str(root / "ds"), "--images", "8",
                "--size", "64,64"]) == 0
    assert run(["merge", "--base", str(cfg), str(weights), "--task",
                f"same={cfg}:{weights}@8", "-o", str(root / "m")]) == 0
    return root, str(cfg), str(weights)


def verbs(cfg: str, weights: str) -> dict[str, list[str]]:
    return {
        "help": ["--help"],
        "info": ["info", str(ROOT / "cfg" / "yolov3.cfg")],
        "info-weights": ["info", cfg, "--weights", weights],
        "info-heads": ["info", "m.cfg", "--heads", "m.heads.json"],
        "diff": ["diff", weights, weights, "--cfg", cfg, "--task-cfg", cfg],
        "merge": ["merge", "--base", cfg, weights, "--task", f"same={cfg}:{weights}@12",
                  "-o", "m12"],
        "split": ["split", "m.cfg", "m.weights", "--heads", "m.heads.json", "--task", "same",
                  "-o", "s"],
        "partial": ["partial", cfg, weights, "p.weights", "--layers", "5"],
        "task-cfg": ["task-cfg", cfg, "--classes", "3", "-o", "t3.cfg"],
        "task-cfg-data": ["task-cfg", cfg, "--data", "ds/shapes.data", "-o", "t4.cfg"],
    }


@pytest.mark.parametrize("verb", list(verbs("", "")))
def test_verb_without_model_imports_no_torch(workdir, verb):
    root, cfg, weights = workdir
    assert run_verb(verbs(cfg, weights)[verb], root) == []


def test_model_verbs_still_import_torch(workdir):
    """The check above can fail: a verb that builds a model does load torch."""
    root, cfg, weights = workdir
    assert "torch" in run_verb(["detect", "--help"], root)
