"""The command line around the core: ``--help``, ``netsurgery dump`` on images and arrays, and
the error policy (user mistakes: one line on stderr, exit 2, no traceback)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import shared_path
from test_cfg import MALFORMED, NET, WARNED

from netsurgery import load_model
from netsurgery.cli.app import run
from netsurgery.detection.image import letterbox_image, load_image, resize_image


def det96():
    folder = shared_path("conformance", "cov-det-96")
    return folder / "net.cfg", folder / "net.weights"


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """``python -m netsurgery`` runs (each pays the torch import, so they run side by side):
    {name: (returncode, stdout, stderr, folder)}."""
    folder = tmp_path_factory.mktemp("cli")
    bad = folder / "bad.cfg"
    bad.write_text(NET + "[convolutional]\nfilters=4\nsiez=3\n")
    weights = folder / "never.weights"  # the cfg error comes first
    runs = {"help": ["--help"],
            "bad cfg": ["dump", "--strict", str(bad), str(weights), "--input", "x.npy",
                        "--out", str(folder / "o.npz")]}
    started = {name: subprocess.Popen([sys.executable, "-m", "netsurgery", *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
               for name, args in runs.items()}
    done = {}
    for name, proc in started.items():
        out, err = proc.communicate(timeout=120)
        done[name] = (proc.returncode, out, err, folder)
    return done


def test_help_as_a_module(processes):
    rc, out, err, _ = processes["help"]
    assert rc == 0, err
    assert out.startswith("Usage: netsurgery")
    assert "dump" in out


def test_version_and_dump_help(capsys):
    assert run(["--version"]) == 0
    assert "0.1.0" in capsys.readouterr().out
    assert run(["dump", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--letterbox / --resize" in out and "--fast / --exact" in out


@pytest.mark.parametrize("mode", ["--resize", "--letterbox"])
def test_dump_on_an_image(mode, tmp_path, capsys):
    cfg, weights = det96()
    image = shared_path("images", "dog.jpg")
    out = tmp_path / "dog.npz"
    assert run(["dump", str(cfg), str(weights), "--input", str(image), mode, "--layers",
                "0,29", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote 2 layer outputs to {out}\n"
    dumped = np.load(out)
    im = load_image(image)
    sized = resize_image(im, 96, 96) if mode == "--resize" else letterbox_image(im, 96, 96)[0]
    np.testing.assert_array_equal(dumped["input"], sized[None])
    if mode == "--letterbox":  # dog.jpg is wider than high: grey bars above and below
        assert np.all(dumped["input"][0, :, 0, :] == 0.5)
    model = load_model(cfg, weights)
    with torch.no_grad():
        expected = model.run(torch.from_numpy(sized[None]), [0, 29])
    for i in (0, 29):
        np.testing.assert_allclose(dumped[f"layer_{i:03d}"], expected[i][0].numpy(), atol=1e-6)


def test_malformed_cfg_exits_2_without_a_traceback(processes):
    rc, out, err, folder = processes["bad cfg"]
    assert rc == 2
    assert err == (f"netsurgery: error: {folder / 'bad.cfg'}:8: [convolutional] unknown key "
                   "'siez': Darknet does not read it in [convolutional] (typo? did you mean "
                   "'size'?)\n")
    assert out == "" and not (folder / "o.npz").exists()


STRICT_CASES = [(flag, m) for m in WARNED[:2] for flag in ("cmd", "group")]


@pytest.mark.parametrize("strict,body,line,message",
                         [("", *m[1:]) for m in MALFORMED] +
                         [(flag, *m[1:]) for flag, m in STRICT_CASES],
                         ids=[m[0] for m in MALFORMED] +
                         [f"{m[0]} --strict {flag}" for flag, m in STRICT_CASES])
def test_every_malformed_cfg_is_one_line_and_exit_2(tmp_path, capsys, strict, body, line,
                                                   message):
    bad = tmp_path / "bad.cfg"
    bad.write_text("filters=4\n[net]\n" if body is None else NET + body)
    _, weights = det96()
    args = ["dump", str(bad), str(weights), "--input", "x.npy", "--out", str(tmp_path / "o.npz")]
    if strict:  # `netsurgery dump --strict ...` or `netsurgery --strict dump ...`
        args.insert(1 if strict == "cmd" else 0, "--strict")
    rc = run(args)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"netsurgery: error: {bad}:{line}: ") and err.count("\n") == 1
    assert message in err and "Traceback" not in err


def test_weights_problems_exit_2(tmp_path, capsys):
    cfg, weights = det96()
    data = weights.read_bytes()
    cut = tmp_path / "cut.weights"
    cut.write_bytes(data[:1000])
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 96, 96), np.float32))
    out = tmp_path / "o.npz"
    assert run(["dump", str(cfg), str(cut), "--input", str(x), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"netsurgery: error: {cut}: ends inside layer 0 [convolutional]")
    assert err.count("\n") == 1
    # a clean cut is a partial file: it runs and says so
    net_bytes = 20 + 4 * (16 * 4 + 16 * 3 * 9)  # layer 0: 16 filters 3x3x3 with BatchNorm
    cut.write_bytes(data[:net_bytes])
    assert run(["dump", str(cfg), str(cut), "--input", str(x), "--out", str(out)]) == 0
    assert "partial weights: layers 0..1 of 30" in capsys.readouterr().err


def test_dump_usage_errors(tmp_path, capsys):
    cfg, weights = det96()
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 96, 96), np.float32))
    out = tmp_path / "o.npz"

    def err_of(*extra):
        rc = run(["dump", str(cfg), str(weights), "--input", str(x), *extra])
        return rc, capsys.readouterr().err

    rc, err = err_of("--out", str(out), "--layers", "1,x")
    assert rc == 2 and "Invalid value for '--layers': '1,x'" in err
    rc, err = err_of("--out", str(out), "--layers", "30")
    assert (rc, err) == (2, "netsurgery: error: layer 30 does not exist: the network has "
                            "layers 0..29\n")
    rc, err = err_of("--out", str(x))
    assert rc == 2 and "output would overwrite the input" in err
    out.write_bytes(b"old")
    rc, err = err_of("--out", str(out), "--layers", "0")
    assert rc == 2 and "exists already; pass --overwrite" in err and out.read_bytes() == b"old"
    assert err_of("--out", str(out), "--layers", "0", "--overwrite")[0] == 0
    assert list(np.load(out).files) == ["input", "layer_000"]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc, err = err_of("--out", str(blocker / "o.npz"), "--layers", "0")  # cannot be written
    assert rc == 2 and err.startswith("netsurgery: error: ") and err.count("\n") == 1
    assert "internal error" not in err
    np.save(x, np.zeros((1, 3, 64, 64), np.float32))
    rc, err = err_of("--out", str(tmp_path / "p.npz"))
    assert rc == 2 and "array of shape (1, 3, 64, 64): expected (1, 3, 96, 96)" in err


def test_dump_shows_cfg_warnings(tmp_path, capsys):
    cfg, weights = det96()
    copy = tmp_path / "dup.cfg"
    text = cfg.read_text()
    copy.write_text(text.replace("[net]\n", "[net]\nbatch=8\n", 1))  # batch= twice
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 96, 96), np.float32))
    assert run(["dump", str(copy), str(weights), "--input", str(x), "--layers", "0",
                "--out", str(tmp_path / "o.npz")]) == 0
    assert capsys.readouterr().err == (f"netsurgery: warning: {copy}:3: [net] duplicate key "
                                       "'batch' (Darknet uses the first, line 2)\n")
