"""All 87 cfg files of AlexeyAB darknet's cfg/ folder (../shared/darknet-cfg-all, byte for
byte): each is read as Darknet reads it (what Darknet ignores is a warning, an error with
strict=True), builds at its own size and at a small one, runs one forward pass where
netsurgery's model supports its layers, and ``info`` prints Darknet's "Total BFLOPS".

Expected totals: for the cfgs that loaded before every layer type was supported, the value
Darknet printed (issue 15 compared all of them; alexnet, extraction.conv, extraction22k and
the three XNOR cfgs were wrong here and are fixed). For the others the value follows from
Darknet's code (parser.c sums ``l.bflops`` of every layer in a float, printed ``%5.3f``):

- [connected], [local], [rnn], [gru], [lstm], [detection], [crop], [normalization],
  [Gaussian_yolo], [contrastive], [implicit], [history] never set ``l.bflops``: 0. So
  alexnet = 2.154 (its convolutions; 2.272 with its three [connected]), extraction.conv
  10.998 and extraction22k 11.400 (the 1000 / 21842-way [connected] left out), t1.test
  2.241 (YOLOv1: convolutions only), cifar / strided / vgg-16 (the convolutions after
  [crop], at the crop size), Gaussian_yolov3_BDD 99.066 and yolov4-tiny_contrastive 16.444
  (convolutions, maxpool, shortcut as for [yolo] networks).
- XNOR convolutions (``xnor=1``) count 2·weights·out_h·out_w / 32: darknet53_448_xnor 2.336,
  tiny-yolo_xnor 0.514, yolov3-tiny_xnor 0.839.
- [crnn] = the sum of its three convolutions (make_crnn_layer): crnn.train 0.017 (three
  [crnn] on a 1x1 input), yolov3-tiny_occlusion_track 8.405.
- rnn, rnn.train, gru, lstm.train (0.000) and crnn.train (0.017): every layer is 1x1, so
  parse_network_cfg_custom's ``avg_outputs / avg_counter`` divides by zero right before the
  print; the values are the sums Darknet would print.
- cspx-p7-mish (1600.719), cspx-p7-mish_hp (542.983), writing (2.567) and
  yolov4-sam-mish-csp-reorg-bfm (84.320) were refused before (surplus/missing anchors, a mask
  past num, keys Darknet ignores); their layers are ordinary, counted as in the other cfgs.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from conftest import data_path

from netsurgery import CfgError, build_network, load_cfg
from netsurgery.analysis.cost import darknet_total_bflops
from netsurgery.darknet.model import DarknetModel

DARKNET_TOTAL_BFLOPS = {
    "Gaussian_yolov3_BDD.cfg": 99.066, "alexnet.cfg": 2.154, "cd53paspp-gamma.cfg": 91.095,
    "cifar.cfg": 1.625, "cifar.test.cfg": 2.122, "crnn.train.cfg": 0.017,
    "csdarknet53-omega.cfg": 13.071, "cspx-p7-mish-omega.cfg": 49.869,
    "cspx-p7-mish.cfg": 1600.719, "cspx-p7-mish_hp.cfg": 542.983,
    "csresnext50-panet-spp-original-optimal.cfg": 100.606, "csresnext50-panet-spp.cfg": 71.344,
    "darknet.cfg": 0.807, "darknet19.cfg": 5.585, "darknet19_448.cfg": 22.340,
    "darknet53.cfg": 18.576, "darknet53_448_xnor.cfg": 2.336, "densenet201.cfg": 10.850,
    "efficientnet-lite3.cfg": 3.361, "efficientnet_b0.cfg": 0.915, "enet-coco.cfg": 3.731,
    "extraction.cfg": 8.521, "extraction.conv.cfg": 10.998, "extraction22k.cfg": 11.400,
    "go.test.cfg": 2.876, "gru.cfg": 0.000, "jnet-conv.cfg": 0.051, "lstm.train.cfg": 0.000,
    "resnet101.cfg": 19.709, "resnet152.cfg": 29.412, "resnet152_trident.cfg": 241.536,
    "resnet50.cfg": 10.007, "resnext152-32x4d.cfg": 28.238, "rnn.cfg": 0.000,
    "rnn.train.cfg": 0.000, "strided.cfg": 5.194, "t1.test.cfg": 2.241,
    "tiny-yolo-voc.cfg": 6.977, "tiny-yolo.cfg": 7.081, "tiny-yolo_xnor.cfg": 0.514,
    "tiny.cfg": 0.985, "vgg-16.cfg": 30.699, "vgg-conv.cfg": 30.699, "writing.cfg": 2.567,
    "yolo-voc.2.0.cfg": 34.909, "yolo-voc.cfg": 29.371, "yolo.2.0.cfg": 35.013,
    "yolo.cfg": 29.475, "yolo9000.cfg": 49.080, "yolov2-tiny-voc.cfg": 6.977,
    "yolov2-tiny.cfg": 5.412, "yolov2-voc.cfg": 29.371, "yolov2.cfg": 29.475,
    "yolov3-openimages.cfg": 148.812, "yolov3-spp.cfg": 141.531, "yolov3-tiny-prn.cfg": 3.467,
    "yolov3-tiny.cfg": 5.571, "yolov3-tiny_3l.cfg": 15.172, "yolov3-tiny_obj.cfg": 5.571,
    "yolov3-tiny_occlusion_track.cfg": 8.405, "yolov3-tiny_xnor.cfg": 0.839,
    "yolov3-voc.cfg": 65.442, "yolov3-voc.yolov3-giou-40.cfg": 65.442, "yolov3.cfg": 65.879,
    "yolov3.coco-giou-12.cfg": 140.723, "yolov3_5l.cfg": 79.427, "yolov4-csp-s-mish.cfg": 20.923,
    "yolov4-csp-swish.cfg": 120.317, "yolov4-csp-x-mish.cfg": 221.986,
    "yolov4-csp-x-swish-frozen.cfg": 221.986, "yolov4-csp-x-swish.cfg": 221.986,
    "yolov4-csp.cfg": 77.003, "yolov4-custom.cfg": 128.459, "yolov4-p5-frozen.cfg": 326.809,
    "yolov4-p5.cfg": 326.809, "yolov4-p6.cfg": 717.190,
    "yolov4-sam-mish-csp-reorg-bfm.cfg": 84.320, "yolov4-tiny-3l.cfg": 17.741,
    "yolov4-tiny-custom.cfg": 6.910, "yolov4-tiny.cfg": 6.910,
    "yolov4-tiny_contrastive.cfg": 16.444, "yolov4.cfg": 128.459, "yolov4_new.cfg": 128.459,
    "yolov4x-mish.cfg": 221.986, "yolov7-tiny.cfg": 5.802, "yolov7.cfg": 104.580,
    "yolov7x.cfg": 189.760,

}

# What Darknet ignores or reads leniently in these files: warnings (errors with strict=True)
WARNINGS = {
    "Gaussian_yolov3_BDD.cfg": ["[net] unknown key 'max_epochs'"],
    "writing.cfg": ["[net] unknown key 'seen'"],
    "yolov4-sam-mish-csp-reorg-bfm.cfg": ["[yolo] unknown key 'uc_normalizer': Darknet does "
                                          "not read it in [yolo] (it is read in "
                                          "[Gaussian_yolo])", "[yolo] unknown key 'beta1'"],
    "cspx-p7-mish.cfg": ["anchors has 40 values, expected 2·num = 32: Darknet reads the "
                         "first 2·num", "mask index 19 is outside 0..15 (num=16)"],
    "cspx-p7-mish_hp.cfg": ["anchors has 31 values, expected 2·num = 32: Darknet keeps its "
                            "default 0.5 for the missing ones"],
    "efficientnet-lite3.cfg": ["[net] duplicate key 'momentum'"],
    "efficientnet_b0.cfg": ["[net] duplicate key 'momentum'"],
    "yolo9000.cfg": ["[net] duplicate key 'batch'"],
    "yolov3-openimages.cfg": ["[net] duplicate key 'batch'"],
}

# Layers netsurgery's model does not run; parse, shapes, weights and BFLOPs still work.
NO_FORWARD = {
    "darknet53_448_xnor.cfg": "xnor=1 (binary convolutions)",
    "tiny-yolo_xnor.cfg": "xnor=1 (binary convolutions)",
    "yolov3-tiny_xnor.cfg": "xnor=1 (binary convolutions)",
    "resnet152_trident.cfg": "share_index= (convolutions sharing weights)",
    "yolo9000.cfg": "[region] tree= (hierarchical softmax)",
    # not unsupported, only slow: their smallest input is 128 px (7 downsamplings) and a
    # forward pass there takes 5-7 s each on one core, more than all the others together
    "cspx-p7-mish.cfg": "too slow for CI at its smallest size",
    "cspx-p7-mish_hp.cfg": "too slow for CI at its smallest size",
    # [crop] of 224x224 needs an input at least that large: 15-31 BFLOPs a pass (cifar.cfg
    # runs [crop], vgg-conv.cfg the VGG convolutions)
    "vgg-16.cfg": "too slow for CI: [crop] 224 fixes the input at 224 px or more",
    "strided.cfg": "too slow for CI: [crop] 224 fixes the input at 224 px or more",
}

SMALL_SIZES = (32, 64, 128, 256)  # the first that every layer accepts


def test_the_folder_holds_the_87_cfgs():
    folder = data_path("darknet-cfg-all")
    assert sorted(p.name for p in folder.glob("*.cfg")) == sorted(DARKNET_TOTAL_BFLOPS)


def small_network(cfg):
    for size in SMALL_SIZES:
        try:
            return build_network(cfg, (size, size))
        except CfgError:
            continue
    return build_network(cfg)  # [crop] 224 and the like: only at the cfg's own size


@pytest.mark.parametrize("name", sorted(DARKNET_TOTAL_BFLOPS))
def test_cfg_reads_builds_runs_and_costs_as_darknet(name):
    path = data_path("darknet-cfg-all", name)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        cfg = load_cfg(path)
        network = build_network(cfg)
    assert f"{darknet_total_bflops(network):.3f}" == f"{DARKNET_TOTAL_BFLOPS[name]:.3f}"
    expected = WARNINGS.get(name, [])
    assert len(cfg.warnings) >= len(expected)
    for text in expected:
        assert any(text in w for w in cfg.warnings), (text, cfg.warnings)
    if not expected:
        assert cfg.warnings == []
    else:  # strict reading refuses the first of them, with the same text
        with pytest.raises(CfgError) as info:
            build_network(load_cfg(path, strict=True))
        assert str(info.value) == cfg.warnings[0]
    assert cfg.to_text() == load_cfg(path).to_text()  # the keys Darknet ignores are kept
    if name in NO_FORWARD:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = small_network(cfg)
    model = DarknetModel(small).eval()
    x = torch.rand(1, small.net.channels, small.net.height, small.net.width)
    with torch.no_grad():
        outputs = model.layer_outputs(x)
    for spec, out in zip(small.layers, outputs):
        assert tuple(out.shape[1:]) == (spec.out_shape.c, spec.out_shape.h, spec.out_shape.w), \
            f"layer {spec.index} [{spec.section.header}]"
        assert torch.isfinite(out).all(), f"layer {spec.index} [{spec.section.header}]"
