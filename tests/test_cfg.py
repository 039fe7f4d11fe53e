"""The cfg reader/writer and the shape rules: Darknet's text conventions, errors located at
``file:line``, and every reference cfg in ../shared/darknet-cfg parsed, built and run."""
from __future__ import annotations

import pytest
import torch
from conftest import find_data, shared_path

from netsurgery import CfgError, build_network, load_cfg, load_model, parse_cfg_text
from netsurgery.darknet.cfg import make_section
from netsurgery.errors import CfgWarning

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n\n"  # lines 1-4, then a blank line 5


# -- reading ------------------------------------------------------------------------------
def test_comments_blank_lines_and_spaces():
    text = ("# made by hand\n[net]\n; input\nwidth = 64\nheight=64\nchannels=3\n\n"
            "[convolutional]\n  filters = 8 \nsize=3\n# the activation\nactivation=leaky\n\n"
            "[yolo]\nmask = 0\nanchors = 10,14,  23,27\nclasses=3\nnum=2\n# end\n")
    cfg = parse_cfg_text(text, "c.cfg")
    conv, yolo = cfg.layers
    assert [(o.key, o.value, o.line) for o in conv.options] == [
        ("filters", "8", 9), ("size", "3", 10), ("activation", "leaky", 12)]
    assert conv.options[2].comments == ["# the activation"]
    assert cfg.net.options[0].comments == ["; input"]
    assert cfg.net.comments == ["# made by hand"]
    assert cfg.trailing_comments == ["# end"]
    assert yolo.get_floats("anchors") == [10.0, 14.0, 23.0, 27.0]
    assert yolo.get_str("anchors") == "10,14,23,27"
    assert cfg.to_text() == (
        "# made by hand\n[net]\n; input\nwidth=64\nheight=64\nchannels=3\n\n"
        "[convolutional]\nfilters=8\nsize=3\n# the activation\nactivation=leaky\n\n"
        "[yolo]\nmask=0\nanchors=10,14,23,27\nclasses=3\nnum=2\n\n# end\n")
    net = build_network(cfg)
    assert net.layers[1].head_anchors == [(10.0, 14.0)]
    assert net.layers[0].out_shape.as_list() == [8, 62, 62]  # size 3, no pad: 64-3+1


def test_crlf_and_bom_read_like_plain_text():
    plain = NET + "[convolutional]\nfilters=4\nsize=1\n# note\nactivation=linear\n"
    windows = "\ufeff" + plain.replace("\n", "\r\n")
    a, b = parse_cfg_text(plain, "a.cfg"), parse_cfg_text(windows, "a.cfg")
    assert a.to_text() == b.to_text()
    assert [(o.key, o.value, o.line, o.comments) for o in b.layers[0].options] == \
        [(o.key, o.value, o.line, o.comments) for o in a.layers[0].options]


def test_bom_file_on_disk(tmp_path):
    path = tmp_path / "bom.cfg"
    path.write_bytes(b"\xef\xbb\xbf" + (NET + "[maxpool]\nsize=2\nstride=2\n").encode())
    net = build_network(path)
    assert net.layers[0].out_shape.as_list() == [3, 16, 16]


def test_inline_comments_are_kept_and_a_word_value_warns():
    cfg = parse_cfg_text(NET + "[convolutional]\nfilters=4 # four\nactivation = leaky ; why\n",
                         "i.cfg")
    conv = cfg.layers[0]
    assert conv.get_int("filters") == 4 and conv.get_str("activation") == "leaky"
    assert "filters=4 # four\nactivation=leaky ; why\n" in cfg.to_text()
    # atoi("4#four") is 4 for Darknet, but it reads "leaky;why" as the activation name
    assert len(cfg.warnings) == 1 and cfg.warnings[0].startswith("i.cfg:8: [convolutional] "
                                                                 "activation:")


def test_section_aliases():
    text = ("[network]\nwidth=16\nheight=16\nchannels=3\n[conv]\nfilters=4\nsize=3\npad=1\n"
            "[local_avg]\nsize=2\nstride=2\n[max]\nsize=2\nstride=2\n[silence]\n[avg]\n"
            "[conn]\noutput=5\n[soft]\n")
    cfg = parse_cfg_text(text, "a.cfg")
    assert cfg.net.type == "net" and cfg.net.header == "network"
    assert [(s.header, s.type) for s in cfg.layers] == [
        ("conv", "convolutional"), ("local_avg", "local_avgpool"), ("max", "maxpool"),
        ("silence", "empty"), ("avg", "avgpool"), ("conn", "connected"), ("soft", "softmax")]
    assert cfg.to_text().startswith("[network]\n") and "[conv]\n" in cfg.to_text()
    net = build_network(cfg)
    assert [s.out_shape.as_list() for s in net.layers] == [
        [4, 16, 16], [4, 8, 8], [4, 4, 4], [4, 4, 4], [4, 1, 1], [5, 1, 1], [5, 1, 1]]
    assert [s.type_name for s in net.layers] == [
        "convolutional", "local_avgpool", "maxpool", "empty", "avgpool", "connected", "softmax"]


def test_duplicate_keys_first_wins_with_a_warning():
    cfg = parse_cfg_text(NET + "[convolutional]\nfilters=4\nsize=3\nfilters=8\n", "d.cfg")
    assert cfg.warnings == ["d.cfg:9: [convolutional] duplicate key 'filters' (Darknet uses "
                            "the first, line 7)"]
    assert build_network(cfg).layers[0].filters == 4
    assert "filters=4\nsize=3\nfilters=8\n" in cfg.to_text()  # both kept, in order


def test_training_keys_order_and_comments_survive_a_round_trip(tmp_path):
    text = ("[net]\n# training\nbatch=64\nsubdivisions=16\nwidth=32\nheight=32\nchannels=3\n"
            "momentum=0.949\ndecay=0.0005\nangle=0\nsaturation = 1.5\nlearning_rate=0.0013\n"
            "burn_in=1000\nmax_batches = 500500\npolicy=steps\nsteps=400000,450000\n"
            "scales=.1,.1\nmosaic=1\n\n[convolutional]\nbatch_normalize=1\nfilters=18\nsize=1\n"
            "stride=1\npad=1\nactivation=linear\n\n[yolo]\nmask = 0,1,2\n"
            "anchors = 12, 16, 19, 36, 40, 28\nclasses=1\nnum=3\njitter=.3\nignore_thresh = .7\n"
            "truth_thresh = 1\nrandom=1\niou_loss=ciou\niou_normalizer=0.07\n"
            "nms_kind=greedynms\nbeta_nms=0.6\n")
    cfg = parse_cfg_text(text, "t.cfg")
    out = tmp_path / "out.cfg"
    cfg.save(out)
    again = load_cfg(out)
    assert again.to_text() == cfg.to_text()
    for a, b in zip([cfg.net, *cfg.layers], [again.net, *again.layers]):
        assert (a.header, [(o.key, o.value, o.comments) for o in a.options]) == \
            (b.header, [(o.key, o.value, o.comments) for o in b.options])
    assert [o.key for o in again.net.options][-5:] == ["max_batches", "policy", "steps",
                                                        "scales", "mosaic"]
    assert again.net.get_floats("scales") == [0.1, 0.1]
    assert again.layers[1].get_str("iou_loss") == "ciou"


def test_typed_getters_and_editing():
    cfg = parse_cfg_text(NET + "[route]\nlayers=-1,2,\n[yolo]\nscale_x_y=1.05\n", "g.cfg")
    route, yolo = cfg.layers
    assert route.get_ints("layers") == [-1, 2]  # one trailing comma, like Darknet
    assert route.get_int("groups", 1) == 1
    assert yolo.get_float("scale_x_y") == 1.05
    assert cfg.net.get_int("width") == 32
    with pytest.raises(CfgError, match=r"^g\.cfg:6: \[route\] missing required key 'groups'$"):
        route.get_int("groups")
    yolo.set("mask", [0, 1])
    yolo.set("scale_x_y", 2.0)
    route.remove("layers")
    assert "[route]\n\n[yolo]\nscale_x_y=2\nmask=0,1\n" in cfg.to_text()
    sec = make_section("conv", {"filters": 8, "activation": "mish"})
    assert (sec.type, sec.header, sec.get_int("filters")) == ("convolutional", "conv", 8)


# -- errors -------------------------------------------------------------------------------
# (name, cfg text after NET, line of the error, text the message must contain)
MALFORMED = [
    ("bad int", "[convolutional]\nfilters=4x\n", 7, "filters=4x: expected an integer"),
    ("bad float", "[yolo]\nscale_x_y=1,05\n", 7, "scale_x_y=1,05: expected a number"),
    ("bad list", "[route]\nlayers=-1,,-2\n", 7, "expected a comma-separated list"),
    ("route to a future layer", "[convolutional]\nfilters=4\n[route]\nlayers=-1,2\n", 9,
     "layers=2 points at layer 2: expected an earlier layer (0..0)"),
    ("route out of range", "[convolutional]\nfilters=4\n[route]\nlayers=-3\n", 9,
     "layers=-3 points at layer -2"),
    ("shortcut out of range", "[convolutional]\nfilters=3\n[shortcut]\nfrom=-5\n", 9,
     "from=-5 points at layer -4"),
    ("shortcut to itself", "[convolutional]\nfilters=3\n[shortcut]\nfrom=1\n", 9,
     "from=1 points at layer 1"),
    ("wrong filters before yolo",
     "[convolutional]\nfilters=255\nsize=1\n[yolo]\nmask=0,1,2\nclasses=2\nnum=3\n", 7,
     "filters=255 does not fit the [yolo] layer 1 after it: expected (classes+5)·len(mask) = "
     "(2+5)·3 = 21"),
    ("unknown section", "[convolutionnal]\nfilters=4\n", 6, "unknown section [convolutionnal]"),
    ("missing =", "[convolutional]\nfilters 4\n", 7, "'filters 4': expected key=value"),
    ("option before any section", None, 1, "before the first section"),
    ("conv groups", "[convolutional]\nfilters=8\ngroups=2\n", 8,
     "groups=2 must divide the input channels (3)"),
    ("route first", "[route]\nlayers=-1\ngroups=2\n", 7, "layers=-1 points at layer -1"),
    ("route groups vs channels", "[convolutional]\nfilters=5\n[route]\nlayers=-1\ngroups=2\n",
     10, "groups=2 does not divide the 5 channels of layer 0"),
    ("mask index", "[convolutional]\nfilters=6\n[yolo]\nmask=3\nclasses=1\nnum=3\n", 9,
     "mask index 3 is outside 0..2 (num=3)"),
    ("filters=0", "[convolutional]\nfilters=0\n", 7, "filters=0: expected an integer ≥ 1"),
    ("stride=0", "[convolutional]\nfilters=4\nstride=0\n", 8, "stride=0: expected an integer ≥ 1"),
    ("maxpool stride=0", "[maxpool]\nsize=2\nstride=0\n", 8, "stride=0"),
    ("upsample stride=0", "[upsample]\nstride=0\n", 7, "stride=0"),
    ("unknown activation", "[convolutional]\nfilters=4\nactivation=leakyrelu\n", 8,
     "unknown activation 'leakyrelu'"),
    ("empty value", "[convolutional]\nfilters=\n", 7, "filters=: expected an integer"),
    ("kernel larger than input", "[convolutional]\nfilters=4\nsize=40\n", 8,
     "too small for size=40"),
    ("second [net]", "[net]\nwidth=3\n", 6, "a second [net] section"),
    ("malformed header", "[convolutional\nfilters=4\n", 6, "malformed section header"),
    ("yolo as first layer", "[yolo]\nclasses=1\nmask=0\n", 6, "the network input has 3 channels"),
    ("route sizes differ", "[convolutional]\nfilters=4\n[maxpool]\nsize=2\nstride=2\n[route]\n"
     "layers=-1,-2\n", 12, "route needs equal sizes"),
    ("missing route layers", "[convolutional]\nfilters=4\n[route]\n", 8,
     "missing required key 'layers'"),
]


# What Darknet accepts (with its own warning, or quietly): a warning here, an error with
# strict=True / --strict. Same format as MALFORMED.
WARNED = [
    ("bad key", "[convolutional]\nfilters=4\nsiez=3\n", 8,
     "unknown key 'siez': Darknet does not read it in [convolutional] (typo? did you mean "
     "'size'?)"),
    ("key of another section", "[maxpool]\nsize=2\nfilters=4\n", 8,
     "unknown key 'filters': Darknet does not read it in [maxpool] (it is read in "),
    ("net key", "[convolutional]\nfilters=4\n", 2,
     "unknown key 'max_epochs': Darknet does not read it in [net] (typo?)"),
    ("surplus anchors", "[convolutional]\nfilters=6\n[yolo]\nmask=0\nclasses=1\nnum=2\n"
     "anchors=10,14,23,27,37,58\n", 12,
     "anchors has 6 values, expected 2·num = 4: Darknet reads the first 2·num"),
    ("missing anchors", "[convolutional]\nfilters=6\n[yolo]\nmask=0\nclasses=1\nnum=2\n"
     "anchors=10,14,23\n", 12,
     "anchors has 3 values, expected 2·num = 4: Darknet keeps its default 0.5"),
    ("mask past num", "[convolutional]\nfilters=6\n[yolo]\nmask=2\nclasses=1\nnum=2\n"
     "anchors=10,14,23,27,37,58\n", 9, "mask index 2 is outside 0..1 (num=2): Darknet reads"),
    ("duplicate key", "[convolutional]\nfilters=4\nfilters=8\n", 8,
     "duplicate key 'filters' (Darknet uses the first, line 7)"),
]


@pytest.mark.parametrize("body,line,message", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_cfg_errors_name_file_and_line(tmp_path, body, line, message):
    path = tmp_path / "bad.cfg"
    path.write_text("filters=4\n[net]\n" if body is None else NET + body)
    with pytest.raises(CfgError) as info:
        load_model(path)  # read, shapes and torch modules: wherever the check lives
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}:{line}: "), text
    assert message in text
    assert info.value.line == line and info.value.path == str(path)


@pytest.mark.parametrize("body,line,message", [m[1:] for m in WARNED],
                         ids=[m[0] for m in WARNED])
def test_what_darknet_accepts_warns_and_strict_refuses(tmp_path, body, line, message):
    path = tmp_path / "lenient.cfg"
    text = NET.replace("[net]\n", "[net]\nmax_epochs=3\n") if line == 2 else NET
    path.write_text(text + body)
    with pytest.warns(CfgWarning) as caught:
        model = load_model(path)  # builds: Darknet reads it too
    expected = [str(w.message) for w in caught if str(w.message).startswith(f"{path}:{line}: ")]
    assert len(expected) == 1 and message in expected[0], [str(w.message) for w in caught]
    assert expected[0] in model.cfg.warnings
    written = model.cfg.to_text().splitlines()  # what Darknet ignores is kept on write-back
    assert all(line in written for line in path.read_text().splitlines() if line)
    for strict in (lambda: load_model(build_network(path, strict=True)),
                   lambda: build_network(load_cfg(path), strict=True)):
        with pytest.raises(CfgError) as info:
            strict()
        assert str(info.value) == expected[0]
        assert info.value.line == line and info.value.path == str(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(CfgError, match="nope.cfg: file not found"):
        load_cfg(tmp_path / "nope.cfg")
    weights = tmp_path / "w.cfg"
    weights.write_bytes(b"\x00\x00\x00\x00\x02\x00\x00\x00" + bytes(range(200, 256)))
    with pytest.raises(CfgError, match=r"w\.cfg:1: binary data \(NUL byte\)"):
        load_cfg(weights)
    with pytest.raises(CfgError, match="no sections"):
        parse_cfg_text("# only a comment\n", "e.cfg")


# -- the reference cfgs -------------------------------------------------------------------
CFG_NAMES = sorted(p.name for p in find_data("darknet-cfg").glob("*.cfg"))

# Darknet's "Total BFLOPS" at the cfg's own size (SPEC.md); Darknet prints %.3f of a float sum.
DARKNET_BFLOPS = {
    "yolov3.cfg": 65.879, "yolov3-tiny.cfg": 5.571, "yolov3-spp.cfg": 141.531,
    "yolov3-voc.cfg": 65.442, "yolov3-openimages.cfg": 148.812, "yolov4.cfg": 128.459,
    "yolov4-tiny.cfg": 6.910, "yolov4-tiny-3l.cfg": 17.741, "yolov4-csp.cfg": 77.003,
    "yolov2.cfg": 29.475, "yolov2-tiny.cfg": 5.412, "darknet53.cfg": 18.576,
    "darknet19.cfg": 5.585, "csdarknet53-omega.cfg": 13.071,
}


def structure(network) -> list:
    return [(s.type_name, s.section.header, [(o.key, o.value) for o in s.section.options],
             s.in_shape, s.out_shape, s.inputs()) for s in network.layers]


@pytest.mark.parametrize("name", CFG_NAMES)
def test_reference_cfg_parses_builds_runs_and_round_trips(name):
    path = shared_path("darknet-cfg", name)
    cfg = load_cfg(path)
    full = build_network(cfg)
    if name in DARKNET_BFLOPS:
        assert full.flops / 1e9 == pytest.approx(DARKNET_BFLOPS[name], abs=1.5e-3)
    assert full.params > 0
    # written back and re-read: the same network
    again = build_network(parse_cfg_text(cfg.to_text(), str(path)))
    assert structure(again) == structure(full)
    # the smallest input (one stride-32 cell): every shape follows, the model runs, and the
    # outputs have the inferred shapes
    small = build_network(cfg, size=(32, 32))
    assert small.net.width == small.net.height == 32
    model = load_model(small)
    heads = small.outputs()
    x = torch.rand(1, small.net.channels, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(heads) >= 1
    for index, out in zip(heads, outs):
        assert list(out.shape[1:]) == small.layers[index].out_shape.as_list()
        assert torch.isfinite(out).all()
    if small.heads():
        assert all(small.layers[i].type_name in ("yolo", "region") for i in heads)
    else:  # the classifiers end with 1000 classes whatever the input size
        assert small.layers[-1].out_shape.numel == 1000


def test_yolov3_tiny_shapes_by_hand():
    net = build_network(shared_path("darknet-cfg", "yolov3-tiny.cfg"))
    shapes = [s.out_shape.as_list() for s in net.layers]
    assert shapes[:12] == [[16, 416, 416], [16, 208, 208], [32, 208, 208], [32, 104, 104],
                           [64, 104, 104], [64, 52, 52], [128, 52, 52], [128, 26, 26],
                           [256, 26, 26], [256, 13, 13], [512, 13, 13], [512, 13, 13]]
    assert shapes[16] == [255, 13, 13] and shapes[23] == [255, 26, 26]
    assert net.layers[17].sources() == [13] and net.layers[20].sources() == [19, 8]
    assert shapes[20] == [384, 26, 26]
    assert net.heads() == [16, 23]
    assert net.consumers()[13] == [14, 17]
    assert net.layers[16].head_anchors == [(81, 82), (135, 169), (344, 319)]


def test_legacy_encoded_comments_are_kept_byte_for_byte(tmp_path):
    # Darknet reads bytes and skips comments: a Latin-1 comment must not stop us either, and
    # writing the cfg back must give the same bytes.
    raw = (b"[net]\n# Gr\xf6\xdfe f\xfcr 416\xb2\nwidth=416\nheight=416\nchannels=3\n\n"
           b"[convolutional]\nfilters=8 # \xe9t\xe9\nsize=3\nstride=1\npad=1\n"
           b"activation=leaky\n")
    src = tmp_path / "latin1.cfg"
    src.write_bytes(raw)
    cfg = load_cfg(src)
    assert cfg.layers[0].get_int("filters") == 8
    out = tmp_path / "out.cfg"
    cfg.save(out)
    assert out.read_bytes() == raw


def test_non_utf8_outside_a_comment_names_the_line(tmp_path):
    src = tmp_path / "bad.cfg"
    src.write_bytes(b"[net]\nwidth=416\n[convolutional]\nactivation=l\xe9aky\n")
    with pytest.raises(CfgError) as info:
        load_cfg(src)
    assert info.value.line == 4
    message = str(info.value)
    assert "activation=l\\xe9aky" in message and "not UTF-8" in message
    message.encode("utf-8")  # printable: no lone surrogate left in the message


def test_task_cfg_changes_only_the_keys_it_sets(tmp_path):
    """`task-cfg` edits `classes`, `filters` (and anchors/num) in place; spacing around `=`,
    blank lines, comments after a value and CRLF line ends stay as the user wrote them."""
    from netsurgery.cli.app import run

    text = ("[net]\r\nwidth = 416\r\nheight=416\r\nchannels=3\r\nsaturation = 1.5\r\n\r\n"
            "# the head\r\n[convolutional]\r\nfilters = 255   # 3*(80+5)\r\nsize=1\r\n"
            "activation=linear\r\n\r\n[yolo]\r\nmask = 0,1,2\r\n"
            "anchors = 10,14,  23,27, 37,58\r\nclasses=80\r\nnum=3\r\n")
    base = tmp_path / "base.cfg"
    base.write_bytes(text.encode())
    assert run(["task-cfg", str(base), "--classes", "2", "-o", str(tmp_path / "t.cfg")]) == 0
    expected = text.replace("filters = 255   #", "filters = 21   #").replace(
        "classes=80", "classes=2")
    assert (tmp_path / "t.cfg").read_bytes() == expected.encode()
