"""Property-based tests of the readers: whatever bytes a user hands us, the cfg and .weights
readers either parse them or raise netsurgery's own error with a message that says where
(file, line or layer) — no other exception escapes. Plus round trips: a generated network
written as cfg text parses back to the same network, and random weights written to a
.weights file load back bit for bit.

Run longer with ``HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz.py``.
"""
from __future__ import annotations

import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis_profiles import FUZZ

from netsurgery.darknet import schema
from netsurgery.darknet.cfg import Cfg, load_cfg, make_section, parse_cfg_text
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import (
    WeightsHeader,
    file_layout,
    load_weights,
    load_weights_bytes,
    nonfinite_report,
    read_header,
    save_weights,
)
from netsurgery.errors import CfgError, NetsurgeryError, WeightsError

CFG_PATH = "fuzz.cfg"
WEIGHTS_PATH = "fuzz.weights"


# =============================================================================================
# Checking an outcome
# =============================================================================================
def _lines(text: str) -> list[str]:
    """The file's lines as an editor numbers them (CR LF, LF or CR ends a line)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return re.split(r"\r\n|\r|\n", text)


def assert_located_cfg_error(exc: BaseException, text: str, path: str = CFG_PATH) -> None:
    """A cfg problem must be a CfgError naming the file and, when it has one, a line that
    exists and holds something (never a blank or comment line)."""
    assert isinstance(exc, CfgError), f"{type(exc).__name__}: {exc}"
    assert exc.path == path
    assert str(exc).startswith(path)
    if exc.line is None:
        assert "no sections" in str(exc), f"error without a line: {exc}"
        return
    lines = _lines(text)
    assert 1 <= exc.line <= len(lines), f"line {exc.line} of {len(lines)}: {exc}"
    content = "".join(lines[exc.line - 1].split())
    assert content and content[0] not in "#;", f"line {exc.line} is {lines[exc.line - 1]!r}: {exc}"
    assert f"{path}:{exc.line}: " in str(exc)


def parse_and_build(text: str, path: str = CFG_PATH, strict_keys: bool = True):
    """parse_cfg_text + build_network; None when the text is (correctly) refused."""
    try:
        network = build_network(parse_cfg_text(text, path, strict_keys))
    except NetsurgeryError as exc:
        assert_located_cfg_error(exc, text, path)
        return None
    for spec in network.layers:  # an accepted network has no empty layer outputs
        assert min(spec.out_shape.c, spec.out_shape.h, spec.out_shape.w) >= 1, \
            f"layer {spec.index} [{spec.section.header}] has output {spec.out_shape}"
    return network


def signature(network) -> list:
    """What a network is: per layer the spec class, the options as written and the shapes."""
    return [(type(s).__name__, s.section.header, [(o.key, o.value) for o in s.section.options],
             s.in_shape, s.out_shape) for s in network.layers]


def assert_text_round_trip(network, strict_keys: bool = True) -> None:
    """An accepted cfg written back parses to the same network, and writing is idempotent."""
    text = network.cfg.to_text()
    again = build_network(parse_cfg_text(text, CFG_PATH, strict_keys))
    assert signature(again) == signature(network)
    assert again.net == network.net
    assert again.cfg.to_text() == text


# =============================================================================================
# Strategies: cfg text
# =============================================================================================
# Keys that steer shape inference, tried much more often than the other keys Darknet reads.
IMPORTANT_KEYS = {
    "net": ["width", "height", "channels", "batch", "inputs"],
    "convolutional": ["filters", "size", "stride", "pad", "padding", "groups", "dilation",
                      "batch_normalize", "activation", "stride_x", "stride_y", "dontload",
                      "dontloadscales"],
    "maxpool": ["size", "stride", "padding", "stride_x", "stride_y"],
    "local_avgpool": ["size", "stride", "padding"],
    "route": ["layers", "groups", "group_id"],
    "shortcut": ["from", "activation", "weights_type", "weights_normalization"],
    "upsample": ["stride", "scale"],
    "yolo": ["mask", "anchors", "classes", "num", "scale_x_y", "new_coords"],
    "region": ["classes", "coords", "num", "anchors", "softmax"],
    "connected": ["output", "activation", "batch_normalize"],
    "reorg": ["stride", "reverse"],
    "reorg3d": ["stride", "reverse"],
    "softmax": ["groups", "temperature"],
    "sam": ["from", "activation"],
    "scale_channels": ["from", "scale_wh"],
    "activation": ["activation"],
}
LAYER_HEADERS = ["convolutional", "conv", "maxpool", "max", "route", "shortcut", "upsample",
                 "yolo", "region", "connected", "avgpool", "reorg", "reorg3d", "softmax",
                 "dropout", "batchnorm", "sam", "scale_channels", "activation", "empty",
                 "local_avgpool", "cost", "lstm", "crop"]
ODD_HEADERS = ["deconvolutional", "Convolutional", "net", "network", "yolo ", "", "[yolo",
               "implicit_add", "ß", "conv]"]

VALUES = st.one_of(
    st.integers(-3, 40).map(str),
    st.integers(-2**70, 2**70).map(str),
    st.sampled_from(["0", "1", "2", "3", "16", "255", "-1", "-2", "1.0", "1e3", "0x10", "1_0",
                     "١٢", "３", "+3", "-0", "nan", "inf", "-inf", "1e400", "", ".5", "5.",
                     "leaky", "linear", "mish", "logistic", "swish", "per_feature",
                     "per_channel", "softmax", "1,,2", "1,2,", ",", "0,1,2", "-1,-4",
                     "10,14,23,27,37,58,81,82,135,169,344,319", "9" * 5000]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.integers(-12, 12), max_size=7).map(lambda v: ",".join(map(str, v))),
    st.text(max_size=8),
)


@st.composite
def option_lines(draw, section_type: str) -> list[str]:
    important = IMPORTANT_KEYS.get(section_type, [])
    others = sorted(schema.known_keys(section_type)) or ["filters"]
    key_choice = st.one_of(st.sampled_from(important), st.sampled_from(others),
                           st.sampled_from(["filter", "Filters", "", "x y", "€"])) \
        if important else st.one_of(st.sampled_from(others), st.sampled_from(["filter", ""]))
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        key, value = draw(key_choice), draw(VALUES)
        sep = draw(st.sampled_from(["=", " = ", "\t=", "==", "", "=\t "]))
        line = f"{draw(st.sampled_from(['', ' ', chr(9)]))}{key}{sep}{value}"
        if draw(st.booleans()) and draw(st.booleans()):
            line += draw(st.sampled_from([" # note", "#x=1", " ; c", "\t# anchors 3,4"]))
        lines.append(line)
        if draw(st.integers(0, 9)) == 0:
            lines.append(line)  # a duplicate key
    return lines


@st.composite
def cfg_texts(draw) -> str:
    """Cfg-like text: mostly real section names and keys, with odd values and odd layout."""
    lines = ["[net]"] if draw(st.integers(0, 9)) else [f"[{draw(st.sampled_from(ODD_HEADERS))}]"]
    net_values = st.one_of(st.sampled_from(["8", "16", "13", "3", "1"]), VALUES)
    for key in ("width", "height", "channels"):
        if draw(st.integers(0, 7)):
            lines.append(f"{key}={draw(net_values)}")
    lines += draw(option_lines("net"))
    for _ in range(draw(st.integers(0, 7))):
        header = draw(st.one_of(st.sampled_from(LAYER_HEADERS), st.sampled_from(ODD_HEADERS))) \
            if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(LAYER_HEADERS))
        if draw(st.integers(0, 6)) == 0:
            lines.append(draw(st.sampled_from(["# a comment", "; another", "", "   "])))
        lines.append(f"[{header}]")
        lines += draw(option_lines(schema.canonical_section(header) or "convolutional"))
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = end.join(lines)
    if draw(st.booleans()):
        text += end
    if draw(st.integers(0, 4)) == 0:
        text = "\ufeff" + text
    return text


# A valid small cfg to mutate line by line.
VALID_CFG = """[net]
width=16
height=16
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1
anchors=10,14,23,27,37,58
classes=4
num=3

[route]
layers=-3

[upsample]
stride=2

[route]
layers=-1,0

[convolutional]
filters=9
size=1
activation=linear

[yolo]
mask=2
anchors=10,14,23,27,37,58
classes=4
num=3
"""


@st.composite
def mutated_cfgs(draw) -> str:
    lines = VALID_CFG.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["value", "value", "value", "delete", "duplicate", "swap",
                                   "insert"]))
        if op == "value" and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "=" + draw(VALUES)
        elif op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            lines.insert(i, draw(st.sampled_from(["[route]", "layers=5", "from=-9", "[yolo]",
                                                  "stride=0", "filters=0", "size=-3",
                                                  "[upsample]", "stride=-4", "groups=3"])))
        if not lines:
            break
    return "\n".join(lines) + "\n"


# =============================================================================================
# Cfg reader: properties
# =============================================================================================
def test_valid_cfg_builds_with_hand_computed_shapes():
    network = parse_and_build(VALID_CFG)
    assert network is not None
    shapes = [s.out_shape.as_list() for s in network.layers]
    assert shapes == [[8, 16, 16], [8, 8, 8], [8, 8, 8], [8, 8, 8], [18, 8, 8], [18, 8, 8],
                      [8, 8, 8], [8, 16, 16], [16, 16, 16], [9, 16, 16], [9, 16, 16]]
    assert_text_round_trip(network)


@FUZZ
@given(st.text(max_size=300))
@example("[net]\n\x0c\nwidth=16\nheight=16\nchannels=3\n[convolutional]\nfilters=0\n")
@example("\ufeff[net]\r\nwidth=8\r\nheight=8\r\nchannels=3\r\n[conv]\r\nfilters=2")
def test_any_text_parses_or_raises_located_cfg_error(text):
    network = parse_and_build(text)
    if network is not None:
        assert_text_round_trip(network)


@FUZZ
@given(cfg_texts(), st.booleans())
def test_cfg_like_text_parses_or_raises_located_cfg_error(text, strict_keys):
    network = parse_and_build(text, strict_keys=strict_keys)
    if network is not None:
        assert_text_round_trip(network, strict_keys)


@FUZZ
@given(mutated_cfgs())
def test_mutated_valid_cfg_parses_or_raises_located_cfg_error(text):
    network = parse_and_build(text)
    if network is not None:
        assert_text_round_trip(network)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([b"", b"[net]\nwidth=8\nheight=8\n"]))
def test_random_bytes_in_a_cfg_file_raise_only_cfg_errors(data, prefix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.cfg"
        path.write_bytes(prefix + data)
        try:
            network = build_network(load_cfg(path))
        except NetsurgeryError as exc:
            assert isinstance(exc, CfgError), f"{type(exc).__name__}: {exc}"
            assert exc.path == str(path) and str(exc).startswith(str(path))
            if exc.line is not None:  # lines end at LF, CR LF or CR
                assert 1 <= exc.line <= len(re.findall(rb"\r\n|\r|\n", prefix + data)) + 1
            return
        assert network.layers


@pytest.mark.parametrize("text, key, line", [
    # A form feed or vertical tab is white space inside a line, not a line end: the error
    # must name the line an editor shows (Darknet reads lines up to '\n' too).
    ("[net]\n\x0c\nwidth=16\nheight=16\nchannels=3\n[convolutional]\nfilters=0\n", "filters", 7),
    ("# a\x0bb\x1cc\x85d\n[net]\nwidth=16\nheight=16\nchannels=3\n[conv]\nsize=0\n", "size", 7),
    ("[net]\r\nwidth=16\r\nheight=16\r\nchannels=3\r\n[convolutional]\r\nstride=0", "stride", 6),
    ("[net]\rwidth=16\rheight=16\rchannels=3\r[convolutional]\rfilters=-2\r", "filters", 6),
    ("\ufeff[net]\n# x\u2028y\u2029\nwidth=16\nheight=16\nchannels=3\n[conv]\nfilters=0\n",
     "filters", 7),
])
def test_error_line_is_the_line_an_editor_shows(text, key, line):
    with pytest.raises(CfgError) as info:
        build_network(parse_cfg_text(text, CFG_PATH))
    assert info.value.line == line
    assert f"{key}=" in str(info.value)


@pytest.mark.parametrize("value", [
    "١٦",  # Arabic-Indic digits: Python's int() reads 16, Darknet's atoi reads 0
    "１６",  # full-width digits
    "1_6",  # Python's digit grouping: atoi reads 1
    "1e1",  # atoi reads 1, float() reads 10
    "0x10",
    "2147483648",  # beyond Darknet's 32-bit int
    "-99999999999999999999",
    "16.5",
    "9" * 5000,  # int() itself refuses strings of over 4300 digits
], ids=lambda v: v if len(v) < 20 else f"{len(v)}-digits")
def test_integers_darknet_would_misread_are_refused(value):
    text = f"[net]\nwidth={value}\nheight=16\nchannels=3\n[convolutional]\nfilters=2\n"
    with pytest.raises(CfgError, match=r"fuzz\.cfg:2: \[net\] width=.*expected an integer"):
        parse_cfg_text(text, CFG_PATH)


@pytest.mark.parametrize("value, expected", [("16", 16), ("+16", 16), ("16.0", 16),
                                             ("0" * 5000 + "16", 16), ("16.", 16),
                                             ("2147483647", 2147483647), ("-3", -3),
                                             ("-2147483648", -2**31)],
                         ids=lambda v: v if len(str(v)) < 20 else "5002-digits")
def test_integers_darknet_reads_alike_are_accepted(value, expected):
    cfg = parse_cfg_text(f"[net]\nwidth={value}\n", CFG_PATH)
    assert cfg.net.get_int("width") == expected


@pytest.mark.parametrize("value", ["0_9", "٠.٩", "nan", "inf", "-inf", "1e400", "0x1p-1"])
def test_floats_darknet_would_misread_are_refused(value):
    with pytest.raises(CfgError, match=r"fuzz\.cfg:2: \[net\] momentum=.*expected a"):
        parse_cfg_text(f"[net]\nmomentum={value}\n", CFG_PATH)


@pytest.mark.parametrize("value, expected", [(".9", 0.9), ("9.", 9.0), ("1e-3", 0.001),
                                             ("-2.5E+1", -25.0), ("1", 1.0)])
def test_floats_in_c_syntax_are_accepted(value, expected):
    assert parse_cfg_text(f"[net]\nmomentum={value}\n").net.get_float("momentum") == expected


def test_inline_comment_duplicate_key_crlf_bom_and_no_final_newline():
    text = ("\ufeff# model\r\n[net]\r\nwidth = 8 # input\r\nheight=8\r\nchannels=3\r\n"
            "[convolutional]\r\nfilters=4\r\nfilters=6\r\nsize=3\r\npad=1")
    cfg = parse_cfg_text(text, CFG_PATH)
    network = build_network(cfg)
    assert network.net.width == 8
    assert network.layers[0].out_shape.as_list() == [4, 8, 8]  # the first filters= wins
    assert any("duplicate key 'filters'" in w and "line 7" in w for w in cfg.warnings)
    assert_text_round_trip(network, strict_keys=False)


def test_upsample_with_negative_stride_may_not_empty_the_output():
    text = "[net]\nwidth=2\nheight=2\nchannels=3\n[upsample]\nstride=-4\n"
    with pytest.raises(CfgError, match=r"fuzz\.cfg:6: .*too small"):
        build_network(parse_cfg_text(text, CFG_PATH))


# =============================================================================================
# Round trip: generated valid networks
# =============================================================================================
ACTIVATIONS = ["leaky", "linear", "logistic", "relu", "mish", "swish", "tanh"]


@st.composite
def networks(draw):
    """A valid small network (conv/maxpool/route/shortcut/upsample/yolo) and its shapes,
    computed here from Darknet's formulas (an oracle independent of netsurgery.darknet.layers)."""
    width, height = draw(st.integers(3, 20)), draw(st.integers(3, 20))
    channels = draw(st.integers(1, 4))
    net_opts = [("width", width), ("height", height), ("channels", channels)]
    if draw(st.booleans()):
        net_opts += [("batch", 64), ("momentum", draw(st.sampled_from([0.9, 0.949, 1e-05])))]
    net = make_section("net", net_opts)
    sections, shapes = [], []

    def prev() -> tuple[int, int, int]:
        return shapes[-1] if shapes else (channels, height, width)

    def add(kind, options, shape):
        section = make_section(kind, options)
        if draw(st.integers(0, 4)) == 0:
            section.comments = [f"# layer {len(sections)}"]
        sections.append(section)
        shapes.append(shape)

    for _ in range(draw(st.integers(1, 7))):
        c, h, w = prev()
        kind = draw(st.sampled_from(["conv", "conv", "maxpool", "route", "shortcut",
                                     "upsample", "yolo"]))
        if kind == "conv":
            size = draw(st.sampled_from([1, 2, 3, 5]))
            stride = draw(st.integers(1, 3))
            divisors = [g for g in range(1, c + 1) if c % g == 0]
            groups = draw(st.sampled_from(divisors))
            filters = groups * draw(st.integers(1, 4))
            opts = [("filters", filters), ("size", size), ("stride", stride)]
            if draw(st.booleans()):
                opts.append(("pad", 1))
                padding = size // 2
            else:
                padding = draw(st.integers(0, 2))
                opts.append(("padding", padding))
            if groups > 1:
                opts.append(("groups", groups))
            if draw(st.booleans()):
                opts.insert(0, ("batch_normalize", 1))
            opts.append(("activation", draw(st.sampled_from(ACTIVATIONS))))
            out_h = (h + 2 * padding - size) // stride + 1
            out_w = (w + 2 * padding - size) // stride + 1
            if min(out_h, out_w) < 1:
                continue
            add("convolutional", opts, (filters, out_h, out_w))
        elif kind == "maxpool":
            size, stride = draw(st.integers(1, 3)), draw(st.integers(1, 2))
            # default padding = size-1: out = (in + size-1 - size)/stride + 1
            add(draw(st.sampled_from(["maxpool", "max"])), [("size", size), ("stride", stride)],
                (c, (h - 1) // stride + 1, (w - 1) // stride + 1))
        elif kind == "route" and shapes:
            first = draw(st.integers(0, len(shapes) - 1))
            same = [i for i, s in enumerate(shapes) if s[1:] == shapes[first][1:]]
            picks = [first] + draw(st.lists(st.sampled_from(same), max_size=2))
            here = len(sections)
            refs = [i - here if draw(st.booleans()) else i for i in picks]
            total = sum(shapes[i][0] for i in picks)
            opts = [("layers", refs)]
            if all(shapes[i][0] % 2 == 0 for i in picks) and draw(st.booleans()):
                gid = draw(st.integers(0, 1))
                opts += [("groups", 2), ("group_id", gid)]
                total //= 2
            add("route", opts, (total, shapes[first][1], shapes[first][2]))
        elif kind == "shortcut" and shapes:
            source = draw(st.integers(0, len(shapes) - 1))
            ref = source - len(sections) if draw(st.booleans()) else source
            opts = [("from", ref), ("activation", draw(st.sampled_from(["linear", "leaky"])))]
            if draw(st.integers(0, 3)) == 0:
                opts.append(("weights_type", draw(st.sampled_from(["per_feature",
                                                                    "per_channel"]))))
            add("shortcut", opts, (c, h, w))
        elif kind == "upsample" and max(h, w) <= 24:
            stride = draw(st.integers(1, 3))
            add("upsample", [("stride", stride)], (c, h * stride, w * stride))
        elif kind == "yolo":
            classes, num = draw(st.integers(1, 3)), draw(st.integers(1, 4))
            mask = draw(st.lists(st.integers(0, num - 1), min_size=1, max_size=num,
                                 unique=True))
            anchors = draw(st.lists(st.one_of(st.integers(1, 400), st.floats(0.5, 400.0)),
                                    min_size=2 * num, max_size=2 * num))
            filters = (classes + 5) * len(mask)
            add("conv", [("filters", filters), ("size", 1), ("activation", "linear")],
                (filters, h, w))
            yolo = [("mask", mask), ("anchors", anchors), ("classes", classes), ("num", num)]
            if draw(st.booleans()):
                yolo.append(("scale_x_y", draw(st.sampled_from([1.05, 1.1, 1.2, 2.0]))))
            add("yolo", yolo, (filters, h, w))
    if not sections:
        add("convolutional", [("filters", 1)], (1, height, width))
    return Cfg(net, sections, CFG_PATH), shapes


@FUZZ
@given(networks())
def test_generated_network_round_trips_through_cfg_text(generated):
    cfg, shapes = generated
    original = build_network(cfg.copy())
    assert [s.out_shape.as_list() for s in original.layers] == [list(s) for s in shapes]
    text = cfg.to_text()
    parsed = parse_cfg_text(text, CFG_PATH)
    assert [(s.type, s.header, [(o.key, o.value) for o in s.options], s.comments)
            for s in parsed.layers] == \
        [(s.type, s.header, [(o.key, o.value) for o in s.options], s.comments)
         for s in cfg.layers]
    network = build_network(parsed)
    assert signature(network) == signature(original)
    assert parsed.to_text() == text


def _random_arrays(network, seed: int, transposed: bool = False):
    """Random float32 bit patterns (NaN payloads and infinities included) for every array."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec, wanted in file_layout(network.layers, transposed):
        arrays[spec.index] = {
            a.name: rng.integers(0, 2**32, size=a.count, dtype=np.uint64)
            .astype(np.uint32).view("<f4").reshape(a.shape) for a in wanted}
    return arrays


@FUZZ
@given(networks(), st.integers(0, 2**32 - 1),
       st.sampled_from([WeightsHeader(0, 2, 5, 0), WeightsHeader(0, 1, 0, 7),
                        WeightsHeader(0, 2, 5, 2**64 - 1), WeightsHeader(1001, 0, 0, 3)]))
def test_random_weights_round_trip_bit_for_bit(generated, seed, header):
    cfg, _ = generated
    network = build_network(cfg)
    arrays = _random_arrays(network, seed, header.transposed)
    expected = header.to_bytes() + b"".join(
        arrays[spec.index][a.name].tobytes()
        for spec, wanted in file_layout(network.layers, header.transposed) for a in wanted)
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "a.weights", Path(tmp) / "b.weights"
        save_weights(first, header, network.layers, arrays)
        assert first.read_bytes() == expected
        wf = load_weights(first, network.layers)
        assert wf.complete and wf.header == header
        loaded = {i: lw.arrays for i, lw in wf.layers.items()}
        assert sorted(loaded) == sorted(arrays)
        assert all(loaded[i][name].tobytes() == arrays[i][name].tobytes()
                   for i in arrays for name in arrays[i])
        save_weights(second, wf.header, network.layers, loaded)
        assert second.read_bytes() == expected
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["a.weights", "b.weights"]


# =============================================================================================
# Weights reader
# =============================================================================================
WEIGHTS_CFG = """[net]
width=8
height=8
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky

[convolutional]
filters=4
size=3
pad=1
activation=linear

[shortcut]
from=-2
weights_type=per_channel

[maxpool]
size=2
stride=2

[convolutional]
filters=6
size=1
activation=linear

[yolo]
mask=0
anchors=1,2,3,4
num=2
classes=1

[route]
layers=3

[connected]
output=3
activation=linear

[batchnorm]
"""
# Floats per layer, by hand: conv bn 4·(1+3) + 4·3·3·3; conv 4 + 4·4·3·3; shortcut
# per_channel (1+1)·4; conv 6 + 6·4; connected 3 + 3·(4·4·4); batchnorm 4·3.
WEIGHTS_FLOATS = {0: 124, 1: 148, 2: 8, 4: 30, 7: 195, 8: 12}
WEIGHTS_NET = build_network(parse_cfg_text(WEIGHTS_CFG, "weights-net.cfg"))
HEADER = WeightsHeader(0, 2, 5, 123456)


def _boundaries() -> list[tuple[int, int, int]]:
    """(start byte, end byte, layer index) of every layer's weights in a 0.2.5 file."""
    out, pos = [], 20
    for index, n in WEIGHTS_FLOATS.items():
        out.append((pos, pos + 4 * n, index))
        pos += 4 * n
    return out


FULL_SIZE = 20 + 4 * sum(WEIGHTS_FLOATS.values())


def _valid_bytes(seed: int = 0) -> bytes:
    body = np.random.default_rng(seed).standard_normal(sum(WEIGHTS_FLOATS.values()))
    return HEADER.to_bytes() + body.astype("<f4").tobytes()


def test_weights_layout_matches_hand_count():
    got = {spec.index: sum(a.count for a in arrays)
           for spec, arrays in file_layout(WEIGHTS_NET.layers)}
    assert got == WEIGHTS_FLOATS
    assert FULL_SIZE == 2088
    wf = load_weights_bytes(_valid_bytes(), WEIGHTS_NET.layers, WEIGHTS_PATH)
    assert wf.complete and wf.header == HEADER and not wf.notes


def assert_located_weights_error(exc: BaseException, path: str = WEIGHTS_PATH) -> None:
    assert isinstance(exc, WeightsError), f"{type(exc).__name__}: {exc}"
    assert str(exc).startswith(f"{path}: ")


@FUZZ
@given(st.integers(0, FULL_SIZE))
@example(0)
@example(15)
@example(16)
@example(19)
@example(20)
@example(FULL_SIZE - 1)
def test_truncated_weights_are_partial_at_a_layer_boundary_else_name_the_layer(n):
    data = _valid_bytes()[:n]
    bounds = _boundaries()
    try:
        wf = load_weights_bytes(data, WEIGHTS_NET.layers, WEIGHTS_PATH)
    except NetsurgeryError as exc:
        assert_located_weights_error(exc)
        if n < 16:
            assert f"{n} bytes is too short" in str(exc)
        elif n < 20:
            assert "too short for a version 0.2.5 header (expected 20)" in str(exc)
        else:
            start, end, layer = next(b for b in bounds if b[0] < n < b[1])
            assert f"ends inside layer {layer} [" in str(exc)
            assert f"need {end - start} bytes from offset {start}, only {n - start} are left" \
                in str(exc)
        return
    ends = {20: 0} | {end: next((b[2] for b in bounds if b[0] == end), len(WEIGHTS_NET))
                      for _, end, _ in bounds}
    assert n in ends, f"{n} bytes loaded although it is no layer boundary"
    assert wf.covered == ends[n]
    assert sorted(wf.layers) == [i for i in WEIGHTS_FLOATS if i < wf.covered]
    assert wf.complete == (n == FULL_SIZE)


@FUZZ
@given(st.binary(min_size=1, max_size=64))
def test_extra_bytes_are_reported_with_their_count(extra):
    with pytest.raises(WeightsError) as info:
        load_weights_bytes(_valid_bytes() + extra, WEIGHTS_NET.layers, WEIGHTS_PATH)
    assert_located_weights_error(info.value)
    assert f"{len(extra)} bytes left over after the last layer with weights (layer 8)" \
        in str(info.value)


@FUZZ
@given(st.binary(min_size=20, max_size=20), st.integers(-8, 8))
@example(struct.pack("<iiiQ", -1, 2, 5, 0), 0)
@example(struct.pack("<iiiI", 0, 1, 0, 2**32 - 1) + b"\0\0\0\0", -4)
@example(struct.pack("<iiiQ", 2000, 2000, 0, 2**64 - 1), 0)
def test_corrupted_header_loads_or_raises_weights_error(header_bytes, shift):
    body = _valid_bytes()[20:]
    data = header_bytes + (body[:shift] if shift < 0 else body + b"\0" * shift)
    try:
        wf = load_weights_bytes(data, WEIGHTS_NET.layers, WEIGHTS_PATH)
    except NetsurgeryError as exc:
        assert_located_weights_error(exc)
        return
    major, minor, revision = struct.unpack("<iii", header_bytes[:12])
    assert min(major, minor, revision) >= 0
    assert (wf.header.major, wf.header.minor, wf.header.revision) == (major, minor, revision)
    seen = header_bytes[12:20] if wf.header.seen_bytes == 8 else header_bytes[12:16]
    assert wf.header.seen == int.from_bytes(seen, "little")
    assert wf.header.to_bytes() == data[:wf.header.size]


@FUZZ
@given(st.one_of(st.binary(max_size=2200),
                 st.integers(0, FULL_SIZE + 8).map(lambda n: _valid_bytes()[:n] + b"\0" * 8)))
def test_random_bytes_load_or_raise_weights_error_alike_from_file_and_memory(data):
    def outcome(load, path):
        try:
            wf = load(path)
        except NetsurgeryError as exc:
            assert_located_weights_error(exc, path)
            return str(exc)[len(path):]
        used = wf.header.size + sum(lw.nbytes for lw in wf.layers.values())
        assert used == len(data)
        return wf.covered, [(i, n, a.tobytes()) for i, lw in sorted(wf.layers.items())
                            for n, a in lw.arrays.items()]

    in_memory = outcome(lambda p: load_weights_bytes(data, WEIGHTS_NET.layers, p), WEIGHTS_PATH)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / WEIGHTS_PATH)
        Path(path).write_bytes(data)
        from_file = outcome(lambda p: load_weights(p, WEIGHTS_NET.layers), path)
    assert from_file == in_memory


@FUZZ
@given(st.binary(max_size=24))
def test_read_header_of_random_bytes(data):
    try:
        header = read_header(data, WEIGHTS_PATH)
    except NetsurgeryError as exc:
        assert_located_weights_error(exc)
        return
    assert header.to_bytes() == data[:header.size]


@pytest.mark.parametrize("header, seen", [(WeightsHeader(0, 2, 5, 0), 2**64 - 1),
                                          (WeightsHeader(0, 1, 0, 0), 2**32 - 1)])
def test_largest_seen_values_round_trip(header, seen):
    header.seen = seen
    data = header.to_bytes() + _valid_bytes()[20:]
    wf = load_weights_bytes(data, WEIGHTS_NET.layers, WEIGHTS_PATH)
    assert wf.header.seen == seen and wf.complete


@pytest.mark.parametrize("header, seen", [(WeightsHeader(0, 2, 5, 0), 2**64),
                                          (WeightsHeader(0, 1, 0, 0), 2**32),
                                          (WeightsHeader(0, 2, 5, 0), -1)])
def test_seen_that_does_not_fit_the_header_is_a_weights_error(header, seen):
    header.seen = seen
    with pytest.raises(WeightsError, match=r"seen=.*does not fit"):
        header.to_bytes()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, sum(WEIGHTS_FLOATS.values()) - 1),
                          st.sampled_from([np.nan, np.inf, -np.inf])), max_size=10))
def test_nan_and_inf_values_load_unchanged_and_are_counted(bad):
    body = np.frombuffer(_valid_bytes()[20:], "<f4").copy()
    for pos, value in bad:
        body[pos] = value
    wf = load_weights_bytes(HEADER.to_bytes() + body.tobytes(), WEIGHTS_NET.layers,
                            WEIGHTS_PATH)
    expected = []
    for start, _end, layer in _boundaries():
        offset = (start - 20) // 4
        for name, arr in wf.layers[layer].arrays.items():
            segment = body[offset:offset + arr.size]
            assert arr.tobytes() == segment.tobytes()
            n_bad = int((~np.isfinite(segment)).sum())
            if n_bad:
                expected.append((layer, name, n_bad))
            offset += arr.size
    assert nonfinite_report(wf) == expected


def test_nonfinite_report_on_a_written_file(tmp_path):
    """The figures `info --weights` prints: layer, array and count of NaN/Inf values."""
    arrays = _random_arrays(WEIGHTS_NET, 0)
    for index, named in arrays.items():  # finite values everywhere first
        for name in named:
            named[name] = np.linspace(-1, 1, named[name].size, dtype="<f4").reshape(
                named[name].shape)
    arrays[0]["rolling_variance"][[1, 3]] = np.nan
    arrays[1]["weights"][0, 0, 0, 0] = np.inf
    arrays[1]["weights"][3, 2, 1, 0] = -np.inf
    arrays[1]["weights"][2, 2, 2, 2] = np.float32(np.nan)
    arrays[8]["biases"][:] = np.nan
    path = tmp_path / "nan.weights"
    save_weights(path, HEADER, WEIGHTS_NET.layers, arrays)
    wf = load_weights(path, WEIGHTS_NET.layers)
    assert nonfinite_report(wf) == [(0, "rolling_variance", 2), (1, "weights", 3),
                                    (8, "biases", 3)]
    assert np.isnan(wf.layers[0].arrays["rolling_variance"][[1, 3]]).all()
