"""[crop], [normalization] (alias [lrn]), [implicit] and [contrastive]: the remaining layer
types of AlexeyAB's parser (crop_layer.c, normalization_layer.c, representation_layer.c,
softmax_layer.c's contrastive part). None of them has BFLOPs in Darknet's count."""
from __future__ import annotations

from dataclasses import dataclass

from netsurgery.darknet.cfg import Section

from .base import (
    BuildContext,
    LayerModule,
    LayerSpec,
    ReferenceKey,
    Shape,
    WeightArray,
    lazy_torch,
    positive,
    register,
)

torch, nn, F = lazy_torch(globals())


@register("crop")
@dataclass(eq=False)
class CropSpec(LayerSpec):
    """The centre crop_height × crop_width of the input, times 2 minus 1 (inputs in [0, 1] to
    [-1, 1]) unless ``noadjust=1``. Flip, angle, saturation, exposure and shift are training
    augmentations: at inference Darknet crops the centre only."""

    crop_h: int = 1
    crop_w: int = 1
    noadjust: bool = False

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "CropSpec":
        s = section
        spec = cls(index, s, ctx.shape_of(index - 1))
        spec.crop_h = positive(s, index, "crop_height", s.get_int("crop_height", 1))
        spec.crop_w = positive(s, index, "crop_width", s.get_int("crop_width", 1))
        spec.noadjust = bool(s.get_int("noadjust", 0))
        i = spec.in_shape
        if spec.crop_h > i.h or spec.crop_w > i.w:
            raise spec.error(f"crop {spec.crop_h}x{spec.crop_w} is larger than the {i.h}x{i.w} "
                             "input (Darknet would read outside it)", "crop_height")
        spec.out_shape = Shape(i.c, spec.crop_h, spec.crop_w)
        return spec

    def offsets(self) -> tuple[int, int]:
        """(dh, dw): where the inference crop starts (forward_crop_layer, not training)."""
        return (self.in_shape.h - self.crop_h) // 2, (self.in_shape.w - self.crop_w) // 2

    def describe(self) -> str:
        return f"{self.crop_h}x{self.crop_w}" + (" noadjust" if self.noadjust else "")

    def build(self):
        return CropModule(self)


class CropModule(LayerModule):
    def __init__(self, spec: CropSpec):
        super().__init__(spec)
        self.resize(spec)
        self.scale, self.shift = (1.0, 0.0) if spec.noadjust else (2.0, -1.0)

    def resize(self, spec: CropSpec) -> None:
        self.window = (*spec.offsets(), spec.crop_h, spec.crop_w)

    def forward(self, x, outputs):
        dh, dw, h, w = self.window
        return x[:, :, dh:dh + h, dw:dw + w] * self.scale + self.shift


@register("normalization")
@dataclass(eq=False)
class NormalizationSpec(LayerSpec):
    """Local response normalisation across channels: x · (kappa + alpha·Σ x²)^-beta, the sum
    over Darknet's window of ``size`` channels, built as forward_normalization_layer builds it
    (a running sum whose first window is channels 0..size/2−1)."""

    size: int = 5
    alpha: float = 0.0001
    beta: float = 0.75
    kappa: float = 1.0

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "NormalizationSpec":
        s = section
        spec = cls(index, s, ctx.shape_of(index - 1))
        spec.size = positive(s, index, "size", s.get_int("size", 5))
        spec.alpha = s.get_float("alpha", 0.0001)
        spec.beta = s.get_float("beta", 0.75)
        spec.kappa = s.get_float("kappa", 1.0)
        spec.out_shape = spec.in_shape
        return spec

    def describe(self) -> str:
        return f"size {self.size}"

    def window_changes(self) -> tuple[list[int], list[int], list[int]]:
        """(first window, channel added at k, channel removed at k) for k = 1..c−1
        (-1: none), Darknet's running-sum recurrence."""
        c = self.in_shape.c
        first = list(range(min(self.size // 2, c)))
        added = [k + self.size // 2 if k + self.size // 2 < c else -1 for k in range(1, c)]
        removed = [k - (self.size - 1) // 2 - 1 for k in range(1, c)]
        return first, added, [r if r >= 0 else -1 for r in removed]

    def build(self):
        return NormalizationModule(self)


class NormalizationModule(LayerModule):
    def __init__(self, spec: NormalizationSpec):
        super().__init__(spec)

        c = spec.in_shape.c
        first, added, removed = spec.window_changes()
        # change[k, j]: how channel j's square enters norms[k] (cumulative over k)
        change = torch.zeros(c, c)
        change[0, first] = 1.0
        for k, (a, r) in enumerate(zip(added, removed), start=1):
            if a >= 0:
                change[k, a] += 1.0
            if r >= 0:
                change[k, r] -= 1.0
        self.register_buffer("window", change.cumsum(0), persistent=False)
        self.alpha, self.beta, self.kappa = spec.alpha, spec.beta, spec.kappa

    def forward(self, x, outputs):
        sums = torch.einsum("kj,njhw->nkhw", self.window.to(x.dtype), x * x)
        return x * (self.kappa + self.alpha * sums).pow(-self.beta)


@register("implicit")
@dataclass(eq=False)
class ImplicitSpec(LayerSpec):
    """A learned constant (YOLOR): ``filters × atoms`` weights, the same output for every
    image, whatever the input."""

    filters: int = 128
    atoms: int = 1

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "ImplicitSpec":
        s = section
        spec = cls(index, s, ctx.shape_of(index - 1))
        spec.filters = positive(s, index, "filters", s.get_int("filters", 128))
        spec.atoms = positive(s, index, "atoms", s.get_int("atoms", 1))
        s.get_float("mean", 0.0), s.get_float("std", 0.2)  # initialisation only
        spec.out_shape = Shape(spec.filters, spec.atoms, 1)  # out_c, out_h, out_w = 1
        return spec

    def weight_arrays(self, transposed: bool = False) -> list[WeightArray]:
        return [WeightArray("weights", (self.filters, self.atoms, 1))]

    def describe(self) -> str:
        return f"{self.filters}x{self.atoms}"

    def build(self):
        return ImplicitModule(self)


class ImplicitModule(LayerModule):
    def __init__(self, spec: ImplicitSpec):
        super().__init__(spec)

        self.weights = nn.Parameter(torch.zeros(spec.filters, spec.atoms, 1))

    def weight_tensors(self):
        return [("weights", self.weights)]

    def forward(self, x, outputs):
        # the batch size comes from the previous output, which the layer otherwise ignores
        return self.weights.unsqueeze(0).repeat(x.shape[0], 1, 1, 1)


@register("contrastive")
@dataclass(eq=False)
class ContrastiveSpec(LayerSpec):
    """Contrastive-loss layer for training embeddings (tracking). At inference Darknet's
    forward returns at once and the output stays zeros; so does ours."""

    reference_keys = (ReferenceKey("yolo_layer", none=0),)

    classes: int = 1000
    yolo_layer: int | None = None

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "ContrastiveSpec":
        s = section
        spec = cls(index, s, ctx.shape_of(index - 1))
        spec.classes = positive(s, index, "classes", s.get_int("classes", 1000))
        ref = s.get_int("yolo_layer", 0)
        if ref == 0:  # Darknet dereferences a NULL layer
            raise spec.error("yolo_layer is missing or 0: expected the [yolo] layer whose "
                             "embeddings it trains", "yolo_layer")
        spec.yolo_layer = ctx.resolve(s, index, "yolo_layer", ref)
        if ctx.specs[spec.yolo_layer].type_name != "yolo":
            raise spec.error(f"yolo_layer={ref} points at layer {spec.yolo_layer} "
                             f"[{ctx.specs[spec.yolo_layer].section.header}]: expected a "
                             "[yolo] layer", "yolo_layer")
        yolo = ctx.specs[spec.yolo_layer]
        ref = yolo.section.get_int("embedding_layer", 999999)
        if ref != 999999:  # make_contrastive_layer compares the embedding sizes, else exits
            source = yolo.index + ref if ref < 0 else ref
            if 0 <= source < yolo.index:
                theirs = ctx.specs[source].out_shape.c // len(yolo.mask)
                i = spec.in_shape
                ours = i.numel // (len(yolo.mask) * i.h * i.w)
                if ours != theirs:
                    raise spec.error(f"embedding size {ours} (input {i} over {len(yolo.mask)} "
                                     f"anchors) differs from the [yolo] layer's {theirs} (its "
                                     f"embedding_layer {source}): expected the same "
                                     "[convolutional] layer's output", "yolo_layer")
        spec.out_shape = spec.in_shape
        return spec

    def describe(self) -> str:
        return f"yolo {self.yolo_layer}"

    def build(self):
        return ContrastiveModule(self)


class ContrastiveModule(LayerModule):
    def forward(self, x, outputs):
        return x.new_zeros(x.shape)
