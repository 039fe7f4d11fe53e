"""Outputs are all-or-nothing: every file is written to a temporary ``.part`` file beside the
target and renamed into place when complete, so an exception or a SIGTERM in the middle of a
write leaves no partial output and no temporary file; outputs never replace inputs, and
existing outputs need --overwrite."""
from __future__ import annotations

import ast
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from netsurgery.cli.app import run
from netsurgery.darknet.cfg import load_cfg, parse_cfg_text
from netsurgery.darknet.model import load_model
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import WeightsHeader, file_layout, load_weights, save_weights
from netsurgery.errors import UsageError, WeightsError
from netsurgery.fileio import atomic_open, atomic_write_bytes, atomic_write_text
from netsurgery.surgery.heads import load_heads
from netsurgery.surgery.merge import TaskInput, merge, merge_files
from netsurgery.surgery.weighted import load_weighted

PACKAGE = Path(__file__).resolve().parents[1] / "netsurgery"


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parts(folder: Path) -> list[str]:
    """Temporary files left in ``folder`` (atomic_open names them ``.NAME.*.part``)."""
    return sorted(p.name for p in Path(folder).rglob("*.part"))


# =============================================================================================
# atomic_open
# =============================================================================================
@pytest.mark.parametrize("exc", [ValueError("disk trouble"), KeyboardInterrupt(),
                                 SystemExit(143)], ids=["error", "ctrl-c", "exit"])
def test_exception_in_the_middle_of_a_write_leaves_nothing(tmp_path, exc):
    target = tmp_path / "out.weights"
    with pytest.raises(type(exc)):
        with atomic_open(target, "wb") as handle:
            handle.write(b"\0" * 4096)
            # while writing: one temporary file beside the target, the target not there yet
            assert parts(tmp_path) and len(parts(tmp_path)) == 1
            assert parts(tmp_path)[0].startswith(".out.weights.")
            assert not target.exists()
            raise exc
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.cfg"
    target.write_text("[net]\nwidth=416\n")
    before = digest(target)
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write("[net]\nwidth=")
            raise RuntimeError("interrupted")
    assert digest(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.cfg"]


def test_successful_write_replaces_and_has_the_usual_mode(tmp_path):
    old = os.umask(0o027)
    try:
        target = tmp_path / "sub" / "out.bin"  # the folder is created
        atomic_write_bytes(target, b"abc")
        atomic_write_text(tmp_path / "sub" / "out.txt", "line\n")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"abc"
    assert (tmp_path / "sub" / "out.txt").read_bytes() == b"line\n"
    assert target.stat().st_mode & 0o777 == 0o640  # 0666 & ~umask, not mkstemp's 0600
    assert parts(tmp_path) == []


def test_output_folder_that_cannot_exist_is_a_usage_error(tmp_path):
    (tmp_path / "plain").write_text("a file, not a folder")
    with pytest.raises(UsageError, match="cannot write here"):
        atomic_write_text(tmp_path / "plain" / "out.cfg", "[net]\n")
    assert parts(tmp_path) == []


# =============================================================================================
# Library writers stop cleanly in the middle
# =============================================================================================
SMALL = """[net]
width=8
height=8
channels=3
[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
filters=6
size=1
activation=linear
[yolo]
mask=0
anchors=1,1,2,2
num=2
classes=1
"""


def small_files(folder: Path, name: str = "small", seed: int = 0) -> tuple[Path, Path]:
    """A small cfg and random weights for it."""
    cfg = folder / f"{name}.cfg"
    cfg.write_text(SMALL)
    layers = build_network(cfg).layers
    rng = np.random.default_rng(seed)
    arrays = {spec.index: {a.name: rng.standard_normal(a.shape).astype("f4") for a in wanted}
              for spec, wanted in file_layout(layers)}
    save_weights(folder / f"{name}.weights", WeightsHeader(), layers, arrays)
    return cfg, folder / f"{name}.weights"


def test_save_weights_failing_after_the_first_layers_leaves_no_file(tmp_path):
    layers = build_network(parse_cfg_text(SMALL)).layers
    arrays = {0: {a.name: np.zeros(a.shape, "f4") for a in layers[0].weight_arrays()}}
    target = tmp_path / "x.weights"
    with pytest.raises(WeightsError, match="layer 2 .*no weights to save"):
        save_weights(target, WeightsHeader(), layers, arrays)  # header + layer 0 written
    assert list(tmp_path.iterdir()) == []


def test_model_save_interrupted_leaves_the_old_file(tmp_path, monkeypatch):
    cfg, weights = small_files(tmp_path)
    model = load_model(cfg, weights)
    target = tmp_path / "copy.weights"
    model.save_weights(target)
    before = digest(target)
    assert before == digest(weights)  # load -> save is byte-identical
    calls = []

    def interrupted(index, *args, **kwargs):
        calls.append(index)
        if len(calls) == 2:  # like a SIGTERM while the second layer is written
            raise KeyboardInterrupt
        return original(index, *args, **kwargs)

    original = model.layer_arrays
    monkeypatch.setattr(model, "layer_arrays", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.save_weights(target)
    assert calls == [0, 2]
    assert digest(target) == before
    assert parts(tmp_path) == []


# =============================================================================================
# Every writer in the package goes through fileio
# =============================================================================================
# Calls that write a file directly, and which argument holds the file.
_SAVE_CALLS = {("np", "save"): 0, ("np", "savez"): 0, ("np", "savez_compressed"): 0,
               ("torch", "save"): 1, ("pickle", "dump"): 1, ("json", "dump"): 1,
               ("cv2", "imwrite"): 0}
_WRITE_METHODS = {"write_text", "write_bytes", "tofile", "savefig", "imwrite"}
# (file, call) -> why it is fine.
_ALLOWED = {
    ("fetch.py", "open(..., 'wb')"): "extracts into a TemporaryDirectory inside the output "
                                      "folder, then os.replace()s the checked files into place",
}


def _direct_writes(path: Path) -> list[tuple[int, str]]:
    """(line, call) of every write to a file that does not go through fileio.atomic_open."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    safe: set[str] = set()  # names bound to atomic_open handles or in-memory buffers
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and isinstance(item.optional_vars, ast.Name) and \
                        getattr(call.func, "id", getattr(call.func, "attr", "")) == "atomic_open":
                    safe.add(item.optional_vars.id)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if getattr(func, "attr", getattr(func, "id", "")) in ("BytesIO", "StringIO"):
                safe.update(t.id for t in node.targets if isinstance(t, ast.Name))

    def is_safe(arg) -> bool:
        return isinstance(arg, ast.Name) and arg.id in safe

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, what = node.func, None
        if isinstance(func, ast.Name) and func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else \
                next((k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                what = f"open(..., {mode.value!r})"
        elif isinstance(func, ast.Attribute):
            if func.attr in _WRITE_METHODS and not (node.args and is_safe(node.args[0])):
                what = f".{func.attr}()"
            key = (getattr(func.value, "id", ""), func.attr)
            if key in _SAVE_CALLS:
                pos = _SAVE_CALLS[key]
                if not is_safe(node.args[pos] if len(node.args) > pos else None):
                    what = f"{key[0]}.{key[1]}()"
            if key[0] == "shutil" and func.attr in ("copy", "copy2", "copyfile", "move"):
                what = f"shutil.{func.attr}()"
        if what:
            found.append((node.lineno, what))
    return sorted(found)


def test_scanner_finds_direct_writes(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import numpy as np, torch, io\n"
                      "def f(path, arr, state, fig):\n"
                      "    np.save(path, arr)\n"
                      "    torch.save(state, path)\n"
                      "    open(path, 'w').write('x')\n"
                      "    path.write_text('x')\n"
                      "    fig.savefig(path)\n"
                      "    buf = io.BytesIO()\n"
                      "    np.savez(buf, a=arr)\n"
                      "    with atomic_open(path) as h:\n"
                      "        torch.save(state, h)\n"
                      "        fig.savefig(h)\n"
                      "    open(path, 'rb').read()\n")
    assert _direct_writes(sample) == [(3, "np.save()"), (4, "torch.save()"),
                                      (5, "open(..., 'w')"), (6, ".write_text()"),
                                      (7, ".savefig()")]


def test_every_output_goes_through_atomic_open():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "fileio.py":
            continue
        for line, what in _direct_writes(path):
            if (path.name, what) not in _ALLOWED:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what} writes a "
                                "file directly; use netsurgery.fileio.atomic_open")
    assert not problems, "\n".join(problems)


# =============================================================================================
# CLI: inputs are never overwritten, existing outputs need --overwrite
# =============================================================================================
def _merge_args(cfg, weights, task_cfg, task_weights, out, *extra):
    return ["merge", "--base", str(cfg), str(weights), "--task",
            f"t={task_cfg}:{task_weights}", "--share-until", "0", "-o", str(out), *extra]


def test_merge_refuses_to_overwrite_its_input(tmp_path, capsys):
    cfg, weights = small_files(tmp_path, "base")
    task_cfg, task_weights = small_files(tmp_path, "task")
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    # -o base: OUT.cfg and OUT.weights would be the base's own files
    assert run(_merge_args(cfg, weights, task_cfg, task_weights, tmp_path / "base")) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'base.cfg'}: output would overwrite the input" in err
    assert {p.name: digest(p) for p in tmp_path.iterdir()} == before  # nothing written


def test_merge_refuses_an_input_reached_by_another_path(tmp_path, capsys, monkeypatch):
    cfg, weights = small_files(tmp_path, "base")
    task_cfg, task_weights = small_files(tmp_path, "task")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    before = digest(task_weights)
    # inputs given as absolute paths, the output relative to the current folder
    assert run(_merge_args(cfg, weights, task_cfg, task_weights, "../task")) == 2
    assert "output would overwrite the input" in capsys.readouterr().err
    assert digest(task_weights) == before


def test_merge_needs_overwrite_for_existing_outputs(tmp_path, capsys):
    cfg, weights = small_files(tmp_path, "base")
    task_cfg, task_weights = small_files(tmp_path, "task", seed=0)
    out = tmp_path / "out" / "merged"
    out.parent.mkdir()
    (out.parent / "merged.heads.json").write_text("keep me")
    assert run(_merge_args(cfg, weights, task_cfg, task_weights, out)) == 2
    assert "merged.heads.json: exists already; pass --overwrite to replace it" in \
        capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged.heads.json"]
    assert (out.parent / "merged.heads.json").read_text() == "keep me"

    assert run(_merge_args(cfg, weights, task_cfg, task_weights, out, "--overwrite")) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == \
        ["merged.cfg", "merged.heads.json", "merged.names", "merged.weights"]
    merged = build_network(load_cfg(f"{out}.cfg"))
    assert load_weights(f"{out}.weights", merged.layers).complete
    assert [g.name for g in load_heads(f"{out}.heads.json").groups()] == ["base", "t"]


def test_merge_output_that_is_a_folder_is_refused(tmp_path, capsys):
    cfg, weights = small_files(tmp_path, "base")
    (tmp_path / "merged.weights").mkdir()
    assert run(_merge_args(cfg, weights, cfg, weights, tmp_path / "merged",
                           "--overwrite")) == 2
    assert "merged.weights: is a folder" in capsys.readouterr().err


def test_merge_interrupted_between_outputs_leaves_none(tmp_path, monkeypatch):
    from netsurgery.surgery import heads as heads_module

    cfg, weights = small_files(tmp_path, "base")

    def interrupted(self, path):
        raise KeyboardInterrupt  # SIGTERM after OUT.cfg and OUT.weights were written

    monkeypatch.setattr(heads_module.MergedHeads, "save", interrupted)
    out = tmp_path / "out" / "m"
    with pytest.raises(KeyboardInterrupt):
        merge_files(str(cfg), str(weights), [f"t={cfg}:{weights}"], str(out), 0)
    assert not out.parent.exists() or sorted(p.name for p in out.parent.iterdir()) == []


@pytest.fixture
def dump_setup(tmp_path):
    cfg, weights = small_files(tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32))
    return cfg, weights, x


@pytest.mark.parametrize("which", ["cfg", "weights", "input"])
def test_dump_refuses_to_overwrite_an_input(dump_setup, which, capsys):
    cfg, weights, x = dump_setup
    target = {"cfg": cfg, "weights": weights, "input": x}[which]
    before = digest(target)
    rc = run(["dump", str(cfg), str(weights), "--input", str(x), "--out", str(target),
              "--overwrite"])
    assert rc == 2
    assert f"{target}: output would overwrite the input" in capsys.readouterr().err
    assert digest(target) == before
    assert parts(target.parent) == []


def test_dump_needs_overwrite_for_an_existing_output(dump_setup, capsys):
    cfg, weights, x = dump_setup
    out = x.parent / "layers.npz"
    out.write_bytes(b"old")
    args = ["dump", str(cfg), str(weights), "--input", str(x), "--out", str(out)]
    assert run(args) == 2
    assert "exists already; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"old"
    assert run(args + ["--overwrite"]) == 0
    with np.load(out) as data:
        assert sorted(data.files) == ["input", "layer_000", "layer_001", "layer_002",
                                      "layer_003"]
        assert data["layer_001"].shape == (4, 4, 4)
    assert parts(out.parent) == []


# =============================================================================================
# A real SIGTERM in the middle of `netsurgery merge`
# =============================================================================================
def _outputs_complete(out: Path, expected_weights_size: int) -> None:
    """Whatever merge left must be complete: a cfg that builds, weights of the full size, a
    heads file that parses."""
    if Path(f"{out}.cfg").exists():
        assert len(build_network(load_cfg(f"{out}.cfg")).layers) == 36
    if Path(f"{out}.weights").exists():
        assert Path(f"{out}.weights").stat().st_size == expected_weights_size
    if Path(f"{out}.heads.json").exists():
        assert [g.name for g in load_heads(f"{out}.heads.json").groups()] == ["base", "t"]


def test_sigterm_during_merge_leaves_no_partial_output(tmp_path, yolov3_tiny):
    cfg, weights = yolov3_tiny
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "merged"
    cmd = [sys.executable, "-m", "netsurgery", "merge", "--base", str(cfg), str(weights),
           "--task", f"t={cfg}:{weights}", "--share-until", "12", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    saw_part, deadline = False, time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.suffix == ".part" for p in folder.iterdir()):
            saw_part = True  # the first output is being written right now
            break
        time.sleep(0.001)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)

    assert parts(folder) == [], "a temporary file was left behind"
    # expected size of the merged weights: base (all 24 layers) + the task's tail 13..23
    base = load_weighted(cfg, weights)
    merged, _ = merge(base, [TaskInput("t", load_weighted(cfg, weights), 12)])
    expected = 20 + 4 * sum(a.count for _, arrays in file_layout(merged.network.layers)
                            for a in arrays)
    _outputs_complete(out, expected)
    left = sorted(p.name for p in folder.iterdir())
    if proc.returncode == 0:  # merge finished before the signal landed: all three complete
        assert left == ["merged.cfg", "merged.heads.json", "merged.names", "merged.weights"], stderr
    else:
        assert saw_part, f"merge ended without writing: {stderr}"
        assert proc.returncode == 130, stderr
        assert stderr.strip().splitlines()[-1].startswith("netsurgery: interrupted")
        # the signal arrived while the first output (the weights) was being written
        assert left == [], left
