"""FoR-Net: a light segmentation network that focuses on hard regions.

Our reading of "FoR-Net: Learning to Focus on Hard Regions for Efficient Semantic
Segmentation" (arXiv 2605.02764; only the abstract is public, see docs/design.md section 1):

    image ─ stem (1/4) ─ stage1 (1/4, detail) ─ stage2 (1/8) ─ stage3 (1/16) ─ stage4 (1/32)
                                   │                 └──────── neck: top-down fusion + global context ──┐
                                   │                                                      F (1/8) ──────┤
                                   │           selector: z = conv1x1(F), s = sigmoid(z)  (importance, 1/8)│
                                   │           Top-K:    M = topk_mask(z, ratio)  (exactly k, on logits)│
                                   │           branches: E = fuse(dw3x3 dilations 1/2/4)(F)             │
                                   │           F' = F + M * s * E   (gradient reaches s; M is constant) │
                                   └── head: upsample F' to 1/4, concat detail, conv, classify, upsample x4

Any input size: H and W from 1 to contract.MAX_SIDE. The network runs on the input padded at
the bottom and right to multiples of the stride (32) and crops every output back to the image
(see :class:`FoRNet`); a multiple of 32 runs exactly as it always did, with no pad and no crop.

Every architectural choice is a field of :class:`FoRNetConfig` so a user can match their
own checkpoint. ``focus="none"`` gives the ablation without selector/Top-K (F' = F + E,
same budget); ``focus="adaptive"`` selects a scene-dependent number of regions.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..contract import COARSE_LOGITS, FOCUS_SCALE, IMPORTANCE, LOGITS, STRIDE, TOPK_FORMS, TOPK_MASK, check_size
from ..errors import FornetError, OptionError
from .padding import Size, ceil_div, crop_top_left, image_size, pad_bottom_right, round_up
from .topk import DEFAULT_STEPS, RATIO_DENOMINATOR, TopK, ratio_numerator, search_schedule

# The module names "focus", "selector" and "topk" below make the ONNX node-name scopes
# (contract.FP32_SCOPES) that every reduced-precision artefact keeps FP32.
FOCUS_MODES = ("topk", "adaptive", "none")
# Bounds of a config (a checkpoint's header is untrusted input): generous for real models
# (the default has 1.5 M parameters), tight enough that no config asks for gigabytes.
MAX_CLASSES = 255  # labels are uint8 and 255 is the ignore index
MAX_CHANNELS = 2048
MAX_DEPTH = 16
MAX_EXPANSION = 8
MAX_BRANCHES = 8
MAX_DILATION = 64
MAX_BISECTION_STEPS = 64
MAX_PARAMETERS = 100_000_000  # checked on the meta device before any weight is allocated
# What the padding to the stride holds (model/padding.py): zeros, i.e. the mean colour once
# normalized, as mmsegmentation's and detectron2's test-time padding. Against edge replication
# on SynthCity crops (benchmarks/pad_mode.py, docs/benchmarks.md section 11): mIoU 0.609 vs
# 0.607, 0.589 vs 0.565 on the 32 px next to the padding; edge replication agrees more often
# with the unpadded scene's labels (99.4 % vs 99.2 % of pixels) but loses the thin classes.
PAD_MODE = "constant"
COARSE_SCALE = 4  # the head's logits are at 1/4 scale


@dataclass(frozen=True)
class FoRNetConfig:
    num_classes: int = 19
    stem_channels: int = 16
    stage_channels: tuple[int, int, int, int] = (32, 64, 128, 256)  # at 1/4, 1/8, 1/16, 1/32
    stage_depths: tuple[int, int, int, int] = (1, 2, 3, 2)
    # Inverted-residual expansion of stages 2..4: narrow at 1/8 where pixels are many,
    # wide at 1/16 and 1/32 where parameters are cheap in FLOPs.
    expansions: tuple[int, int, int] = (2, 3, 4)
    neck_channels: int = 96
    branch_dilations: tuple[int, ...] = (1, 2, 4)
    branch_channels: int = 48
    selector_channels: int = 32
    head_channels: int = 64
    detail_channels: int = 48
    focus: str = "topk"  # "topk" (fixed ratio), "adaptive", or "none" (ablation)
    topk_ratio: float = 0.25
    topk_mode: str = "exact"  # "exact" | "threshold"; switchable after loading
    # Legacy: the rounds of the value-space bisection that the exact search replaced. Kept so
    # that every existing checkpoint and config still loads (and is still range-checked);
    # the Top-K no longer reads it.
    bisection_steps: int = 32
    # Sequential counting rounds of the threshold Top-K's exact search (5..32; fewer rounds
    # compare more thresholds at once). Exact at every value; see topk.search_schedule.
    topk_search_steps: int = DEFAULT_STEPS
    adaptive_threshold: float = 0.5
    adaptive_min_ratio: float = 0.05
    adaptive_max_ratio: float = 0.5

    def __post_init__(self):
        """Every field in its range (one :class:`OptionError` line), before anything is built."""
        if self.focus not in FOCUS_MODES:
            raise OptionError(f"focus must be one of {FOCUS_MODES}, got {self.focus!r}")
        if self.topk_mode not in TOPK_FORMS:
            raise OptionError(f"topk_mode must be one of {TOPK_FORMS}, got {self.topk_mode!r}")
        for name, length in (("stage_channels", 4), ("stage_depths", 4), ("expansions", 3)):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != length:
                raise OptionError(f"{name} needs {length} entries (stages at 1/4, 1/8, 1/16, 1/32), got {value!r}")
        if not isinstance(self.branch_dilations, tuple) or not 1 <= len(self.branch_dilations) <= MAX_BRANCHES:
            raise OptionError(f"branch_dilations needs 1 to {MAX_BRANCHES} entries, got {self.branch_dilations!r}")
        channels = ("stem_channels", "neck_channels", "branch_channels", "selector_channels", "head_channels",
                    "detail_channels")
        _integers("num_classes", [self.num_classes], MAX_CLASSES)
        for name in channels:
            _integers(name, [getattr(self, name)], MAX_CHANNELS)
        _integers("stage_channels", self.stage_channels, MAX_CHANNELS)
        _integers("stage_depths", self.stage_depths, MAX_DEPTH)
        _integers("expansions", self.expansions, MAX_EXPANSION)
        _integers("branch_dilations", self.branch_dilations, MAX_DILATION)
        _integers("bisection_steps", [self.bisection_steps], MAX_BISECTION_STEPS)
        try:
            search_schedule(self.topk_search_steps)
        except ValueError as exc:
            raise OptionError(f"topk_search_steps: {exc}") from None
        ratios = ["topk_ratio"] + (["adaptive_min_ratio", "adaptive_max_ratio"] if self.focus == "adaptive" else [])
        for name in ratios:
            _ratio(name, getattr(self, name))
        for name in ("adaptive_threshold", "adaptive_min_ratio", "adaptive_max_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise OptionError(f"{name} must be a number from 0 to 1, got {value!r}")
        if self.adaptive_min_ratio > self.adaptive_max_ratio:
            raise OptionError(f"adaptive_min_ratio {self.adaptive_min_ratio} is above adaptive_max_ratio "
                              f"{self.adaptive_max_ratio}")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "FoRNetConfig":
        if not isinstance(data, dict):
            raise FornetError(f"a FoR-Net config must be an object of fields, got a {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise FornetError(f"unknown FoR-Net config fields {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes) -> "FoRNetConfig":
        return FoRNetConfig.from_dict({**self.to_dict(), **changes})

    # fields that change only how the network runs, not its weights (bisection_steps: legacy)
    RUNTIME_FIELDS = ("topk_mode", "topk_search_steps", "bisection_steps")


def _integers(name: str, values, most: int) -> None:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise OptionError(f"{name} must be integers from 1 to {most}, got {value!r}")


def _ratio(name: str, value) -> None:
    """A Top-K ratio: a finite number in (0, 1], in steps of 1/1000 (see model/topk.py)."""
    try:
        if isinstance(value, bool) or not math.isfinite(value):
            raise ValueError
        ratio_numerator(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number in (0, 1] in steps of 1/{RATIO_DENOMINATOR}, "
                          f"got {value!r}") from None


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    padding = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def conv_bn(cin: int, cout: int, k: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout))


class SeparableBlock(nn.Module):
    """Depthwise 3x3 + pointwise, residual when the shape allows (cheap at 1/4 scale)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.dw = conv_bn_relu(cin, cin, 3, stride, groups=cin)
        self.pw = conv_bn(cin, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.pw(self.dw(x))
        return F.relu(x + y) if self.residual else F.relu(y)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3, project 1x1."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = conv_bn_relu(cin, hidden, 1)
        self.dw = conv_bn_relu(hidden, hidden, 3, stride, groups=hidden)
        self.project = conv_bn(hidden, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class Backbone(nn.Module):
    """Stem to 1/4 and four stages at 1/4, 1/8, 1/16, 1/32."""

    def __init__(self, cfg: FoRNetConfig):
        super().__init__()
        c = cfg.stage_channels
        self.stem = nn.Sequential(
            conv_bn_relu(3, cfg.stem_channels, 3, 2), conv_bn_relu(cfg.stem_channels, c[0], 3, 2)
        )
        self.stage1 = nn.Sequential(*[SeparableBlock(c[0], c[0]) for _ in range(cfg.stage_depths[0])])
        e, d = cfg.expansions, cfg.stage_depths
        self.stage2 = self._stage(c[0], c[1], d[1], e[0])
        self.stage3 = self._stage(c[1], c[2], d[2], e[1])
        self.stage4 = self._stage(c[2], c[3], d[3], e[2])

    @staticmethod
    def _stage(cin: int, cout: int, depth: int, expansion: int) -> nn.Sequential:
        blocks = [InvertedResidual(cin, cout, 2, expansion)]
        blocks += [InvertedResidual(cout, cout, 1, expansion) for _ in range(depth - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x4 = self.stage1(self.stem(x))
        x8 = self.stage2(x4)
        x16 = self.stage3(x8)
        x32 = self.stage4(x16)
        return x4, x8, x16, x32


def upsample2(x: torch.Tensor) -> torch.Tensor:
    # A constant scale (not a size read from another tensor) keeps Shape ops out of the graph.
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class Neck(nn.Module):
    """Top-down fusion of 1/32, 1/16, 1/8 features plus global context, output at 1/8."""

    def __init__(self, cfg: FoRNetConfig):
        super().__init__()
        c, n = cfg.stage_channels, cfg.neck_channels
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c[3], n, 1, bias=False), nn.ReLU(inplace=True))
        self.lateral32 = conv_bn(c[3], n)
        self.lateral16 = conv_bn(c[2], n)
        self.lateral8 = conv_bn(c[1], n)
        self.smooth16 = SeparableBlock(n, n)
        self.smooth8 = SeparableBlock(n, n)

    def forward(self, x8, x16, x32):
        p32 = F.relu(self.lateral32(x32) + self.context(x32))
        p16 = self.smooth16(F.relu(self.lateral16(x16) + upsample2(p32)))
        return self.smooth8(F.relu(self.lateral8(x8) + upsample2(p16)))


class MultiScaleBranches(nn.Module):
    """Parallel depthwise branches with different dilations, fused by a 1x1 conv."""

    def __init__(self, channels: int, branch_channels: int, dilations: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                conv_bn_relu(channels, channels, 3, dilation=d, groups=channels),
                conv_bn_relu(channels, branch_channels, 1),
            )
            for d in dilations
        )
        self.fuse = conv_bn(branch_channels * len(dilations), channels)

    def forward(self, x):
        return self.fuse(torch.cat([b(x) for b in self.branches], dim=1))


class Selector(nn.Module):
    """Region scores, one per 1/8-scale cell that holds image: ``(logits, importance = sigmoid(logits))``.

    The Top-K selects on the logits (same order as the importance, but no saturation into
    ties at 0.0/1.0); the importance weights the enhancement and is the exported output.
    Both are computed here, and cropped here to the ``cells`` (h, w) that hold image (None:
    all of them), so that their ONNX nodes carry the "/focus/selector/" scope and stay FP32.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True))
        self.score = nn.Conv2d(hidden, 1, 1)

    def forward(self, x, cells: tuple[Size, Size] | None = None):
        logits = self.score(self.conv(x))
        importance = torch.sigmoid(logits)  # before the crop: the values of the padded map's cells, bit for bit
        if cells is None:
            return logits, importance
        return crop_top_left(logits, *cells), crop_top_left(importance, *cells)


class FocusModule(nn.Module):
    """F' = F + M * s * E(F): multi-scale enhancement emphasised on the selected regions.

    ``M`` = Top-K of the selector's logits (exactly k positions, see model/topk.py),
    ``s`` = sigmoid(logits), the importance map. On a padded input both cover only the
    ``cells`` that hold image (the Top-K ranks those alone, so k = ceil(ratio * their
    number) and a padded cell is never selected); ``M * s`` is zero-padded back to the
    feature map's size, so the padding's cells are not enhanced.
    """

    def __init__(self, cfg: FoRNetConfig):
        super().__init__()
        self.enhance = MultiScaleBranches(cfg.neck_channels, cfg.branch_channels, cfg.branch_dilations)
        self.uses_selector = cfg.focus != "none"
        if self.uses_selector:
            self.selector = Selector(cfg.neck_channels, cfg.selector_channels)
            self.topk = TopK(
                ratio=cfg.topk_ratio,
                mode=cfg.topk_mode,
                steps=cfg.topk_search_steps,
                selection="adaptive" if cfg.focus == "adaptive" else "fixed",
                adaptive_threshold=cfg.adaptive_threshold,
                min_ratio=cfg.adaptive_min_ratio,
                max_ratio=cfg.adaptive_max_ratio,
            )

    def forward(self, x, cells: tuple[Size, Size] | None = None, padded: tuple[Size, Size] | None = None):
        """``cells``: (h, w) of the cells that hold image, ``padded``: x's (h, w); both None
        when every cell holds image (then no crop and no pad: the graph of a stride multiple)."""
        enhanced = self.enhance(x)
        if not self.uses_selector:
            return x + enhanced, None, None
        logits, importance = self.selector(x, cells)
        mask = self.topk(logits.detach())  # selection is not differentiable; s is
        gate = mask * importance
        if cells is not None:
            gate = pad_bottom_right(gate, *padded)
        return x + gate * enhanced, importance, mask


class Head(nn.Module):
    def __init__(self, cfg: FoRNetConfig):
        super().__init__()
        self.detail = conv_bn_relu(cfg.stage_channels[0], cfg.detail_channels, 1)
        cin = cfg.neck_channels + cfg.detail_channels
        self.fuse = nn.Sequential(conv_bn_relu(cin, cin, 3, groups=cin), conv_bn_relu(cin, cfg.head_channels, 1))
        self.classifier = nn.Conv2d(cfg.head_channels, cfg.num_classes, 1)

    def forward(self, focused, x4):
        y = torch.cat([upsample2(focused), self.detail(x4)], dim=1)
        return self.classifier(self.fuse(y))


class FoRNet(nn.Module):
    """FoR-Net. ``forward(x)`` -> logits (N, C, H, W); ``forward_all`` also returns the
    head's logits before the x4 upsample (``coarse_logits``, 1/4 scale), the importance map
    and the Top-K mask (1/8 scale).

    Any H x W (1 to contract.MAX_SIDE). The input is padded at the bottom and right to
    ``Hp x Wp``, the next multiples of the stride, with zeros (:data:`PAD_MODE`); the network
    runs at that size, and every output is cropped to the cells that hold image:

    * ``logits`` (N, C, H, W): the x4 upsample of the padded head output, cropped (its last
      rows and columns interpolate towards the first padded cell, as the interior does
      towards its neighbours);
    * ``coarse_logits`` (N, C, ceil(H/4), ceil(W/4)): the head output, cropped;
    * ``importance`` and ``topk_mask`` (N, 1, ceil(H/8), ceil(W/8)): the Top-K ranks these
      cells only, so it selects exactly ``k = ceil(ratio * ceil(H/8) * ceil(W/8))`` of them
      (adaptive K: its count and bounds on them too) under topk.py's rule, and no padded
      cell is ever selected or enhanced.

    Everything else is the network on the padded input: ``logits`` are those of the model
    run on the explicitly padded image with its Top-K restricted to the same cells, cropped.
    A multiple of the stride is neither padded nor cropped (the same ops as before).
    """

    output_stride = STRIDE

    def __init__(self, config: FoRNetConfig | None = None):
        super().__init__()
        self.config = config or FoRNetConfig()
        self.backbone = Backbone(self.config)
        self.neck = Neck(self.config)
        self.focus = FocusModule(self.config)
        self.head = Head(self.config)

    def check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if x.ndim != 4 or x.shape[1] != 3:
            raise FornetError(f"FoR-Net takes an N x 3 x H x W batch, got shape {tuple(x.shape)}")
        check_size(int(x.shape[-2]), int(x.shape[-1]))

    def forward_features(self, x):
        x4, x8, x16, x32 = self.backbone(x)
        return x4, self.neck(x8, x16, x32)

    def forward_all(self, x: torch.Tensor, traced_size: bool = False) -> dict[str, torch.Tensor | None]:
        """Every output (class docstring). ``traced_size``: take H and W from the runtime
        shape as tensors (a dynamic-shape export: the pad and crop amounts become shape
        arithmetic in the graph, there whatever the traced example's size); by default they
        are Python ints (eager, a static export: constants, and no pad or crop node at a
        multiple of the stride)."""
        self.check_input(x)
        height, width = image_size(x, traced_size)
        aligned = not traced_size and height % self.output_stride == 0 and width % self.output_stride == 0
        cells = padded_cells = None
        if not aligned:
            padded = round_up(height, self.output_stride), round_up(width, self.output_stride)
            x = pad_bottom_right(x, *padded, PAD_MODE)
            cells = ceil_div(height, FOCUS_SCALE), ceil_div(width, FOCUS_SCALE)
            padded_cells = ceil_div(padded[0], FOCUS_SCALE), ceil_div(padded[1], FOCUS_SCALE)
        x4, features = self.forward_features(x)
        focused, importance, mask = self.focus(features, cells, padded_cells)
        coarse = self.head(focused, x4)
        logits = F.interpolate(coarse, scale_factor=4.0, mode="bilinear", align_corners=False)
        if not aligned:
            logits = crop_top_left(logits, height, width)
            coarse = crop_top_left(coarse, ceil_div(height, COARSE_SCALE), ceil_div(width, COARSE_SCALE))
        return {LOGITS: logits, COARSE_LOGITS: coarse, IMPORTANCE: importance, TOPK_MASK: mask}

    def forward(self, x: torch.Tensor, return_all: bool = False):
        """Logits, or with ``return_all`` the dict of :meth:`forward_all` (a keyword rather
        than a second method so that DistributedDataParallel's forward hooks apply)."""
        out = self.forward_all(x)
        return out if return_all else out[LOGITS]

    @property
    def topk(self) -> TopK | None:
        return self.focus.topk if self.focus.uses_selector else None

    def set_topk_mode(self, mode: str, steps: int | None = None) -> "FoRNet":
        """Switch exact/threshold Top-K without retraining (no-op for focus='none').

        ``steps``: rounds of the threshold search (``topk_search_steps``); both modes select
        the same positions whatever the value.
        """
        if self.topk is not None:
            self.topk.mode = mode
            if steps is not None:
                self.topk.steps = steps
        changes = {"topk_mode": mode} | ({"topk_search_steps": steps} if steps is not None else {})
        self.config = self.config.replace(**changes)
        return self


def build_model(config: FoRNetConfig | None = None) -> FoRNet:
    """The one factory: a FoR-Net from a config (defaults when None); a config of more than
    :data:`MAX_PARAMETERS` parameters is refused before any weight is allocated."""
    total = sum(math.prod(shape) for shape, _ in state_spec(config).values())
    if total > MAX_PARAMETERS:
        raise OptionError(f"this FoR-Net config has {total / 1e6:.0f} M parameters, more than the supported "
                          f"{MAX_PARAMETERS / 1e6:.0f} M")
    return FoRNet(config)


def state_spec(config: FoRNetConfig | None = None) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of every ``state_dict`` entry a config makes, computed on PyTorch's
    meta device (no memory): what a checkpoint's tensors are compared with before the
    model is built."""
    with torch.device("meta"):
        model = FoRNet(config)
    return {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, height: int = 1024, width: int = 2048) -> float:
    """FLOPs (2 x multiply-accumulates) of convolutions for one image of the given size.

    Convolutions are >99 % of the arithmetic; elementwise ops, resizes and the Top-K
    bisection are left out, as common FLOP counters do.
    """
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, height, width))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return 2.0 * total
