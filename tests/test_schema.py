"""Checks of netsurgery.darknet.schema against the reference cfg files and Darknet's parser."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import data_path

from netsurgery.darknet import schema


def _read_cfg(path: Path) -> list[tuple[str, int, str, str]]:
    """(section as written, line number, key, value) for every option line of a cfg."""
    out: list[tuple[str, int, str, str]] = []
    section = None
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = "".join(raw.split())  # Darknet removes every blank of the line
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            section = line
            continue
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        assert section is not None, f"{path.name}:{number}: option before any section"
        out.append((section, number, key, value))
    return out


def _cfg_files() -> list[Path]:
    files = sorted(data_path("darknet-cfg").glob("*.cfg"))
    if not files:
        pytest.skip("darknet-cfg holds no .cfg file")
    return files


def test_reference_cfgs_use_only_known_sections_and_keys() -> None:
    problems = []
    for path in _cfg_files():
        headers = [
            "".join(raw.split())
            for raw in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if raw.strip().startswith("[")
        ]
        for header in headers:
            if schema.canonical_section(header) is None:
                problems.append(f"{path.name}: unknown section {header}")
        for section, number, key, _value in _read_cfg(path):
            if schema.value_kind(section, key) is None:
                problems.append(f"{path.name}:{number}: {section} {key}")
    assert not problems, "\n".join(problems)


def test_reference_cfg_values_fit_their_kind() -> None:
    def fits(kind: str, value: str) -> bool:
        items = value.split(",") if kind in ("ints", "floats") else [value]
        items = [item for item in items if item != ""]  # a trailing comma is harmless
        try:
            for item in items:
                if kind in ("int", "ints"):
                    int(item)
                elif kind in ("float", "floats"):
                    float(item)
        except ValueError:
            return False
        return bool(items)

    problems = []
    for path in _cfg_files():
        for section, number, key, value in _read_cfg(path):
            kind = schema.value_kind(section, key)
            if kind is not None and not fits(kind, value):
                problems.append(f"{path.name}:{number}: {section} {key}={value} is not {kind}")
    assert not problems, "\n".join(problems)


def test_aliases_and_canonical_names() -> None:
    expected = {
        "conv": "convolutional",
        "network": "net",
        "max": "maxpool",
        "avg": "avgpool",
        "soft": "softmax",
        "conn": "connected",
        "local_avg": "local_avgpool",
        "silence": "empty",
        "lrn": "normalization",
        "reorg": "reorg",
        "reorg3d": "reorg3d",
    }
    for alias, canon in expected.items():
        assert schema.SECTION_ALIASES[alias] == canon
        assert schema.canonical_section(alias) == canon
        assert schema.canonical_section(f"[{alias}]") == canon
    for canon in schema.SECTION_KEYS:
        assert schema.SECTION_ALIASES[canon] == canon
    assert set(schema.SECTION_ALIASES.values()) == set(schema.SECTION_KEYS)
    assert set(schema.REQUIRED_KEYS) == set(schema.SECTION_KEYS)
    assert schema.canonical_section("[ net ]") == "net"
    # Darknet compares names case-sensitively and does not know these.
    assert schema.canonical_section("Gaussian_yolo") == "Gaussian_yolo"
    assert schema.canonical_section("gaussian_yolo") is None
    assert schema.canonical_section("Convolutional") is None
    assert schema.canonical_section("deconvolutional") is None
    assert schema.canonical_section("implicit_add") is None
    assert schema.canonical_section("nonsense") is None


def test_specific_kinds() -> None:
    vk = schema.value_kind
    assert vk("convolutional", "filters") == "int"
    assert vk("conv", "activation") == "str"
    assert vk("yolo", "anchors") == "floats"
    assert vk("yolo", "mask") == "ints"
    assert vk("yolo", "counters_per_class") == "ints"
    assert vk("yolo", "random") == "float"
    assert vk("region", "anchors") == "floats"
    assert vk("route", "layers") == "ints"
    assert vk("shortcut", "from") == "ints"
    assert vk("sam", "from") == "int"
    assert vk("scale_channels", "from") == "int"
    # [net] steps go through atoi, scales through atof
    assert vk("net", "steps") == "ints"
    assert vk("net", "scales") == "floats"
    assert vk("net", "seq_scales") == "floats"
    assert vk("network", "policy") == "str"
    assert vk("net", "B1") == "float"
    assert vk("net", "b1") is None


def test_common_layer_keys() -> None:
    for key in ("stopbackward", "dontload", "dontloadscales", "train_only_bn", "onlyforward",
                "dont_update", "burnin_update"):
        assert schema.COMMON_LAYER_KEYS[key] == "int"
        assert schema.value_kind("maxpool", key) == "int"
        assert schema.value_kind("empty", key) == "int"
        assert schema.value_kind("net", key) is None  # [net] is not a layer
    assert schema.value_kind("yolo", "clip") == "float"
    # learning_rate is the network rate in [net] and a per-layer scale elsewhere
    assert schema.value_kind("net", "learning_rate") == "float"
    assert schema.value_kind("convolutional", "learning_rate") == "float"
    assert "stopbackward" in schema.known_keys("conv")
    assert "stopbackward" not in schema.known_keys("net")
    assert schema.known_keys("unknown") == {}


def test_keys_darknet_never_reads() -> None:
    assert schema.value_kind("avgpool", "size") is None
    assert schema.value_kind("maxpool", "filters") is None
    assert schema.value_kind("yolo", "coords") is None
    assert schema.value_kind("convolutional", "filter") is None  # a typo
    assert schema.value_kind("nonsense", "filters") is None


def test_required_keys() -> None:
    assert schema.REQUIRED_KEYS["route"] == ("layers",)
    assert schema.REQUIRED_KEYS["shortcut"] == ("from",)
    assert schema.REQUIRED_KEYS["sam"] == ("from",)
    assert schema.REQUIRED_KEYS["scale_channels"] == ("from",)
    assert schema.REQUIRED_KEYS["connected"] == ()  # output= defaults to 1
    for section, keys in schema.REQUIRED_KEYS.items():
        for key in keys:
            assert key in schema.SECTION_KEYS[section]
