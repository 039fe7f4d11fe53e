"""Robustness of the command line (issue 19): no input is ever overwritten, no user mistake
ends in an internal error or a hang, nothing is dropped without a count, exit 2 when nothing
could be processed. Small networks and datasets written here; each case runs in well under a
second except where a real image is decoded."""
from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsurgery.cli.app import run
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import WeightsHeader, random_arrays, save_weights
from netsurgery.detection.detect import plan_drawings
from netsurgery.errors import UsageError
from netsurgery.fileio import (
    atomic_open,
    atomic_write_text,
    check_output,
    remove_stale_temporaries,
    staged_outputs,
)
from netsurgery.surgery.merge import parse_task_option

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"
YOLO_CFG = NET + ("[convolutional]\nfilters=18\nsize=1\nactivation=linear\n[yolo]\n"
                  "mask=0,1,2\nanchors=4,4,8,8,16,16\nclasses=1\nnum=3\n")


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def tiny_net(tmp: Path, nan: bool = False) -> tuple[str, str]:
    cfg = write(tmp / "net.cfg", YOLO_CFG)
    layers = build_network(cfg).layers
    arrays = random_arrays(layers)
    if nan:
        arrays[0]["weights"].flat[3] = np.nan
    save_weights(tmp / "net.weights", WeightsHeader(), layers, arrays)
    return str(cfg), str(tmp / "net.weights")


def png(path: Path, value: int = 128, size: tuple[int, int] = (40, 30)) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), value, np.uint8))
    return path


def dataset(tmp: Path, labels: dict[str, str | None], names: str = "thing\n") -> Path:
    """A 1-class dataset: one image per key, its label file's text (None: no label file)."""
    lines = []
    for stem, text in labels.items():
        image = png(tmp / "images" / f"{stem}.png")
        if text is not None:
            write(image.with_suffix(".txt"), text)
        lines.append(str(image))
    write(tmp / "valid.txt", "".join(f"{p}\n" for p in lines))
    write(tmp / "c.names", names)
    return write(tmp / "d.data", f"classes=1\ntrain={tmp / 'valid.txt'}\n"
                                 f"valid={tmp / 'valid.txt'}\nnames={tmp / 'c.names'}\n")


def digest(path: Path) -> bytes:
    return Path(path).read_bytes()


# =============================================================================================
# 1. inputs are never outputs, whatever leads to them
# =============================================================================================
@pytest.mark.parametrize("target", ["d.data", "valid.txt", "c.names", "images/a.png",
                                    "images/a.txt"])
def test_eval_json_never_replaces_a_file_the_data_file_leads_to(tmp_path, capsys, target):
    cfg, weights = tiny_net(tmp_path)
    data = dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    before = digest(tmp_path / target)
    rc = run(["eval", cfg, weights, "--data", str(data), "--json", str(tmp_path / target),
              "--overwrite"])
    assert rc == 2
    assert "output would overwrite the input" in capsys.readouterr().err
    assert digest(tmp_path / target) == before


def test_task_cfg_onto_its_data_file_and_detect_json_onto_names(tmp_path, capsys):
    cfg, weights = tiny_net(tmp_path)
    data = dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    before = digest(data)
    assert run(["task-cfg", cfg, "--data", str(data), "-o", str(data), "--overwrite"]) == 2
    assert digest(data) == before
    names = tmp_path / "c.names"
    assert run(["detect", cfg, weights, str(tmp_path / "images" / "a.png"), "--names",
                str(names), "--json", str(names), "--overwrite"]) == 2
    assert names.read_text() == "thing\n"
    assert capsys.readouterr().err.count("output would overwrite the input") == 2


def test_info_json_onto_its_heads_file_and_the_names_it_names(tmp_path):
    cfg, _ = tiny_net(tmp_path)
    names = write(tmp_path / "t.names", "a\n")
    heads = write(tmp_path / "m.heads.json", json.dumps(
        {"format": "netsurgery-heads/1", "base": {"names_file": "t.names"}}))
    for target in (heads, names):
        before = digest(target)
        assert run(["info", cfg, "--heads", str(heads), "--json", str(target),
                    "--overwrite"]) == 2
        assert digest(target) == before


def test_an_output_reached_through_a_symlink_or_hard_link_is_an_input(tmp_path):
    data = dataset(tmp_path, {"a": ""})
    os.symlink(tmp_path / "c.names", tmp_path / "link.names")
    os.link(tmp_path / "valid.txt", tmp_path / "hard.txt")
    from netsurgery.fileio import DataInput

    for out in ("link.names", "hard.txt", "images/../c.names"):
        with pytest.raises(UsageError, match="output would overwrite the input"):
            check_output(tmp_path / out, [DataInput(data)], overwrite=True)


def test_detect_drawings_need_overwrite_and_never_replace_an_input(tmp_path, capsys):
    cfg, weights = tiny_net(tmp_path)
    image = png(tmp_path / "pics" / "a.png")
    out = tmp_path / "out"
    assert run(["detect", cfg, weights, str(image), "--out", str(out)]) == 0
    drawing = out / "a_detections.jpg"
    first = digest(drawing)
    assert run(["detect", cfg, weights, str(image), "--out", str(out)]) == 2
    assert "exists already; pass --overwrite" in capsys.readouterr().err
    assert run(["detect", cfg, weights, str(image), "--out", str(out), "--overwrite"]) == 0
    # an input image that happens to be named like a drawing is never replaced
    victim = png(out / "b_detections.jpg", 7)
    before = digest(victim)
    other = png(tmp_path / "pics" / "b.png")
    assert run(["detect", cfg, weights, str(other), str(victim), "--out", str(out),
                "--overwrite"]) == 2
    assert "output would overwrite the input" in capsys.readouterr().err
    assert digest(victim) == before and digest(drawing) == first or drawing.exists()


def test_same_stem_from_two_folders_gives_two_drawings(tmp_path, capsys):
    cfg, weights = tiny_net(tmp_path)
    one, two = png(tmp_path / "x" / "a.png", 10), png(tmp_path / "y" / "a.png", 200)
    out = tmp_path / "out"
    assert run(["detect", cfg, weights, str(one), str(two), str(one), "--out", str(out),
                "--thresh", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_2_detections.jpg", "a_detections.jpg"]
    import cv2

    means = [cv2.imread(str(out / n)).mean() for n in ("a_detections.jpg",
                                                        "a_2_detections.jpg")]
    assert means[0] < 100 < means[1]  # each drawing is of its own image


def test_plan_drawings_skips_names_taken_by_real_stems(tmp_path):
    images = [tmp_path / "x" / "a.png", tmp_path / "a_2.png", tmp_path / "y" / "a.png"]
    plan = plan_drawings(images, tmp_path / "o")
    names = [plan[os.path.realpath(p)].name for p in images]
    assert names == ["a_detections.jpg", "a_2_detections.jpg", "a_3_detections.jpg"]


# =============================================================================================
# 2-3. user mistakes that used to be internal errors, hangs or out-of-memory
# =============================================================================================
def test_fifo_and_devices_are_refused_without_blocking(tmp_path, capsys):
    cfg, weights = tiny_net(tmp_path)
    fifo = tmp_path / "pipe.cfg"
    os.mkfifo(fifo)
    cases = [["info", str(fifo)], ["info", "/dev/zero"], ["info", cfg, "--weights", str(fifo)],
             ["info", cfg, "--weights", "/dev/zero"], ["task-cfg", cfg, "--data", str(fifo),
                                                      "-o", str(tmp_path / "o.cfg")]]

    def hung(signum, frame):
        raise TimeoutError("blocked reading a pipe")

    previous = signal.signal(signal.SIGALRM, hung)
    try:
        for args in cases:
            signal.alarm(30)
            assert run(args) == 2, args
            signal.alarm(0)
            err = capsys.readouterr().err
            assert "not a regular file" in err and "Traceback" not in err, err
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("args, message", [
    (["--size", "60000,60000"], "more than the"),
    (["--device", "bogus"], "expected cpu, cuda or cuda:N"),
    (["--device", "cuda"], "no usable CUDA device"),
    (["--thresh", "nan"], "expected a number from 0 to 1"),
    (["--nms", "-1"], "expected a number from 0 to 1"),
    (["--batch", "0"], "x>=1"),
])
def test_detect_option_mistakes_exit_2(tmp_path, capsys, args, message):
    import torch

    if args[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("this torch build has CUDA")
    cfg, weights = tiny_net(tmp_path)
    assert run(["detect", cfg, weights, str(png(tmp_path / "a.png")), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err


def test_huge_filters_and_a_huge_png_are_refused_up_front(tmp_path, capsys):
    big = write(tmp_path / "big.cfg", NET + "[convolutional]\nfilters=1000000000\nsize=3\n")
    header = WeightsHeader().to_bytes()
    assert run(["detect", str(big), str(write(tmp_path / "h.weights", header)),
                str(png(tmp_path / "a.png"))]) == 2
    assert "GiB of layer outputs), more than the" in capsys.readouterr().err
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (20001 * 64), 9)  # the first rows only: never decoded
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    huge = write(tmp_path / "huge.png", b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                 + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    cfg, weights = tiny_net(tmp_path)
    assert run(["detect", cfg, weights, str(huge)]) == 2
    err = capsys.readouterr().err
    assert "20000x20000 pixels, more than the 67 Mpx" in err
    assert "no image could be read: all 1 skipped" in err


def test_names_and_image_mistakes(tmp_path, capsys):
    cfg, weights = tiny_net(tmp_path)
    image = png(tmp_path / "a.png")
    binary = write(tmp_path / "bin.names", b"\x89PNG\r\n\x1a\n\x00\x00")
    assert run(["detect", cfg, weights, str(image), "--names", str(binary)]) == 2
    assert "binary data (NUL byte)" in capsys.readouterr().err
    # an image whose name ends in .txt is an image, not a list
    odd = tmp_path / "photo.txt"
    odd.write_bytes(image.read_bytes())
    assert run(["detect", cfg, weights, str(odd)]) == 0
    assert "1 images" in capsys.readouterr().out


def test_detect_refuses_nan_and_header_only_weights(tmp_path, capsys):
    cfg, weights = tiny_net(tmp_path, nan=True)
    image = str(png(tmp_path / "a.png"))
    assert run(["detect", cfg, weights, image]) == 2
    assert "layer 0 'weights' holds NaN or infinite values" in capsys.readouterr().err
    write(Path(weights), WeightsHeader().to_bytes())
    assert run(["detect", cfg, weights, image]) == 2
    assert "holds only the header" in capsys.readouterr().err


def test_task_cfg_mistakes_leave_no_output(tmp_path, capsys):
    plain = write(tmp_path / "plain.cfg", NET + "[convolutional]\nfilters=4\n")
    out = tmp_path / "t.cfg"
    assert run(["task-cfg", str(plain), "--classes", "3", "-o", str(out)]) == 2
    data = dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": ""})
    cfg, _ = tiny_net(tmp_path)
    assert run(["task-cfg", cfg, "--data", str(data), "-o", str(out)]) == 2  # 1 box, 3 anchors
    assert run(["task-cfg", cfg, "--data", str(data), "--classes", "7", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no [yolo] layer to retarget" in err and "too few to fit 3 anchors" in err
    assert "says classes=1" in err and "internal error" not in err
    assert not out.exists() and not list(tmp_path.glob(".t.cfg*"))
    assert run(["task-cfg", cfg, "--data", str(data), "--keep-anchors", "-o", str(out)]) == 0


# =============================================================================================
# 4-5. eval: labels counted as the user chose, nothing dropped silently, exit 2 on nothing
# =============================================================================================
def test_eval_counts_missing_labels_as_no_objects_and_skips_bad_ones(tmp_path, capsys):
    cfg, weights = tiny_net(tmp_path)
    data = dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "nolabel": None,
                              "bad": "0 0.5 0.5 0.2\n", "empty": ""})
    out = tmp_path / "m.json"
    assert run(["eval", cfg, weights, "--data", str(data), "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "3 of 4 images scored (1 without a label file: no objects), 1 skipped" in \
        captured.out
    assert f"skipped: {tmp_path / 'images' / 'bad.txt'}:1: expected 5 columns" in captured.err
    images = json.loads(out.read_text())["heads"]["model"]["images"]
    assert images["listed"] == 4 and images["scored"] == 3 and images["skipped"] == 1
    assert images["without_label_file"] == 1 and len(images["issues"]) == 1
    assert run(["eval", cfg, weights, "--data", str(data), "--strict"]) == 2
    assert "bad.txt:1: expected 5 columns" in capsys.readouterr().err


def test_eval_over_no_readable_image_exits_2(tmp_path, capsys):
    cfg, weights = tiny_net(tmp_path)
    data = dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "images" / "a.png").write_bytes(b"broken")
    assert run(["eval", cfg, weights, "--data", str(data)]) == 2
    assert "no image could be scored (0 of 1 images scored, 1 skipped" in \
        capsys.readouterr().err


def test_eval_names_file_shorter_than_classes(tmp_path, capsys):
    cfg, weights = tiny_net(tmp_path)
    data = dataset(tmp_path, {"a": ""}, names="\n")
    assert run(["eval", cfg, weights, "--data", str(data)]) == 2
    assert "no class names" in capsys.readouterr().err


_LABEL_LINE = st.one_of(
    st.tuples(st.integers(-2, 3), *[st.floats(-0.5, 1.5) | st.just(float("nan"))] * 4).map(
        lambda t: " ".join(map(str, t))),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30))


@settings(max_examples=15, deadline=None)
@given(files=st.lists(st.one_of(st.none(), st.lists(_LABEL_LINE, max_size=4)), min_size=1,
                      max_size=4))
def test_eval_counts_every_image_whatever_its_label_file(tmp_path_factory, files):
    """Hypothesis: any label files. Every listed image is scored or skipped (never silently
    dropped), the counts agree between output and JSON, and the only errors are located
    DataErrors (exit 2)."""
    from netsurgery.darknet.model import load_model
    from netsurgery.detection.evaluate import evaluate_model
    from netsurgery.errors import NetsurgeryError

    tmp = tmp_path_factory.mktemp("labels")
    cfg, weights = tiny_net(tmp)
    labels = {f"im{i}": None if lines is None else "\n".join(lines)
              for i, lines in enumerate(files)}
    data = dataset(tmp, labels)
    model = load_model(cfg, weights, inference=True)
    try:
        result = evaluate_model(model, data)
    except NetsurgeryError as exc:
        assert "no image could be scored" in str(exc)
        return
    cov = result.coverage
    assert cov.scored + cov.skipped == cov.listed == len(files)
    assert cov.without_label_file == sum(1 for lines in files if lines is None)
    assert len(cov.issues) >= cov.skipped


# =============================================================================================
# option values (hypothesis)
# =============================================================================================
@settings(max_examples=40, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.text(max_size=6)))
def test_fraction_options_accept_exactly_finite_numbers_in_0_1(value):
    import click

    from netsurgery.cli.app import FRACTION

    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    ok = np.isfinite(number) and 0 <= number <= 1
    try:
        assert FRACTION.convert(value, None, None) == number and ok
    except click.BadParameter as exc:
        assert not ok and "expected a number from 0 to 1" in exc.message


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet="0123456789-, x", max_size=8))
def test_share_point_lists_are_non_negative_and_non_empty(text):
    import click

    from netsurgery.cli.app import K_LIST

    try:
        values = K_LIST.convert(text, None, None)
    except click.BadParameter as exc:
        assert "expected" in exc.message
        return
    assert values and all(v >= 0 for v in values)


def test_option_ranges_on_other_verbs(tmp_path, capsys):
    cfg, weights = tiny_net(tmp_path)
    data = dataset(tmp_path, {"a": ""})
    assert run(["eval", cfg, weights, "--data", str(data), "--iou", "7"]) == 2
    assert run(["sweep", "--base", cfg, weights, "--task-cfg", cfg, "--data", str(data),
                "--k", ",", "--out", str(tmp_path / "s")]) == 2
    assert run(["merge", "--base", cfg, weights, "--task", f"t={cfg}:{weights}",
                "--share-until", "-1", "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "expected a number from 0 to 1" in err and "expected at least one integer" in err
    assert "expected a layer index ≥ 0" in err
    assert not (tmp_path / "s").exists()


# =============================================================================================
# 6. names that used to be refused
# =============================================================================================
def test_task_option_paths_with_at_and_colon(tmp_path):
    cfg = write(tmp_path / "a:b.cfg", YOLO_CFG)
    assert parse_task_option(f"t={cfg}:w@2x.weights", 3) == ("t", str(cfg), "w@2x.weights", 3)
    assert parse_task_option(f"t={cfg}:w@2x.weights@7", 3) == ("t", str(cfg), "w@2x.weights",
                                                                7)
    assert parse_task_option("t=x:y.cfg:z.weights", 1) == ("t", "x:y.cfg", "z.weights", 1)
    assert parse_task_option("t=a.cfg:b.weights", 1) == ("t", "a.cfg", "b.weights", 1)


@pytest.mark.parametrize("length", [235, 243, 250, 255])
def test_long_output_names_can_be_written(tmp_path, length):
    target = tmp_path / ("n" * (length - 4) + ".cfg")
    atomic_write_text(target, "[net]\n")
    assert target.read_text() == "[net]\n"
    with staged_outputs([target]) as (staged,):
        atomic_write_text(staged, "x")
    assert target.read_text() == "x" and sorted(tmp_path.iterdir()) == [target]


# =============================================================================================
# 7-8. leftovers, signals and messages
# =============================================================================================
def test_leftovers_of_a_killed_writer_are_removed_by_the_next_run(tmp_path):
    target = tmp_path / "out.weights"
    code = ("import os, sys\nfrom netsurgery.fileio import atomic_open\n"
            "with atomic_open(sys.argv[1]) as f:\n    f.write(b'x'); f.flush()\n"
            "    os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code, str(target)], timeout=60)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.weights.") and left[0].endswith(".part")
    alive = tmp_path / f".out.weights.{os.getpid()}-abcdef.part"  # a writer still running
    alive.write_bytes(b"")
    atomic_write_text(target, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "out.weights"]
    assert remove_stale_temporaries(target, ".part") == []


def test_a_full_disk_names_the_output_not_the_temporary_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "out.cfg"
    with pytest.raises(UsageError) as info:
        with staged_outputs([target]) as (staged,):
            with atomic_open(staged, "w") as handle:
                handle.write("x")
    assert str(info.value) == f"{target}: cannot write here: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_start_up_exits_130_quietly(monkeypatch, capsys):
    import netsurgery.cli.app as app

    def interrupted(*args, **kwargs):  # as if Ctrl-C came while the command's module imports
        raise KeyboardInterrupt

    monkeypatch.setattr(app.LazyGroup, "get_command", interrupted)
    assert run(["info", "x.cfg"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().startswith("netsurgery: interrupted")


def test_ctrl_c_of_a_real_start_up_is_quiet(tmp_path):
    """SIGINT while `detect` imports torch (the slow part of its start-up): exit 130, one
    line, no traceback."""
    cfg, weights = tiny_net(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "netsurgery", "detect", cfg, weights,
                             str(png(tmp_path / "a.png"))], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if "libtorch" in maps.read_text():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130)
    if proc.returncode == 130:
        assert err.strip().startswith("netsurgery: interrupted")


def test_numpy_warnings_and_libpng_lines_do_not_leak(tmp_path, capfd, monkeypatch):
    import netsurgery.cli.info as info_cli

    real = info_cli.network_cost

    def noisy(*args, **kwargs):
        np.float64(0) / np.float64(0)  # RuntimeWarning: invalid value encountered
        return real(*args, **kwargs)

    monkeypatch.setattr(info_cli, "network_cost", noisy)
    cfg, weights = tiny_net(tmp_path)
    assert run(["info", cfg]) == 0
    assert "RuntimeWarning" not in capfd.readouterr().err
    good = png(tmp_path / "ok.png").read_bytes()
    broken = bytearray(good)
    broken[60:70] = b"\xff" * 10  # inside IDAT: libpng reports a data error
    write(tmp_path / "bad.png", bytes(broken))
    assert run(["detect", cfg, weights, str(tmp_path / "bad.png")]) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith(("skipped", "netsurgery: error")) for line in lines), lines


def test_train_says_to_pass_base_cfg(tmp_path, capsys):
    _, weights = tiny_net(tmp_path)
    other = write(tmp_path / "task" / "task.cfg",
                  YOLO_CFG.replace(NET, NET + "[convolutional]\nfilters=8\nsize=1\n"))
    base = tmp_path / "w" / "base.weights"
    base.parent.mkdir()
    Path(weights).rename(base)  # no base.cfg beside it: the task cfg is tried and does not fit
    data = dataset(tmp_path, {"a": ""})
    assert run(["train", "--cfg", str(other), "--weights", str(base), "--data", str(data),
                "--out", str(tmp_path / "run"), "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert "pass --base-cfg with the cfg they belong to" in err


# =============================================================================================
# 9. the diff chart's y axis follows the data
# =============================================================================================
def test_diff_chart_scale_follows_the_boxes_not_one_huge_maximum():
    from matplotlib.figure import Figure

    from netsurgery.analysis.plots import _apply_scale, choose_scale

    scale = choose_scale([0.005, 0.02, 0.05, 0.31, 0.022])  # bodies of the demo's layer 13
    assert not scale.log and scale.top == pytest.approx(1.12 * 0.31)
    ax = Figure().add_subplot()
    _apply_scale(ax, scale, [(13, 1.76e4), (18, 0.2)])
    assert ax.get_ylim() == pytest.approx((0.0, 1.12 * 0.31))
    assert [t.get_text() for t in ax.texts] == ["max 1.76e+04"]  # only the clipped maximum
    wide = choose_scale([1e-4, 0.5, 3.0])  # bodies over four decades: log
    assert wide.log
    ax = Figure().add_subplot()
    _apply_scale(ax, wide)
    assert ax.get_yscale() == "log"
    assert choose_scale([1e-4, 3.0], log_y=False).log is False
    assert choose_scale([0.1, 0.2], log_y=True).log is True
    assert choose_scale([]) == choose_scale([0.0, float("nan")])  # nothing changed: linear
