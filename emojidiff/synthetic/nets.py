"""Small CNNs for the synthetic world's face analysers, and the tensor conventions they share.

Two architectures exist on purpose: the *training* analysers (used in losses) are plain CNNs, the *evaluation*
analysers are residual CNNs with other widths, trained with another seed on other identities, as the paper
scores identity with a recogniser different from the one used in training.

All networks take ``(B, 3, 64, 64)`` float tensors in [0, 1]; :func:`to_input` resizes anything else
(differentiably).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .factors import EXPRESSION_RANGES
from .render import RATIO_NAMES

INPUT_SIZE = 64
N_EXPR = len(EXPRESSION_RANGES)
N_RATIOS = len(RATIO_NAMES)
#: Face-net output layout: presence logit, box (4), landmarks (10), expression factors, ratios.
OUT_PRESENCE = slice(0, 1)
OUT_BOX = slice(1, 5)
OUT_LMK = slice(5, 15)
OUT_EXPR = slice(15, 15 + N_EXPR)
OUT_RATIOS = slice(15 + N_EXPR, 15 + N_EXPR + N_RATIOS)
FACE_OUTPUTS = 15 + N_EXPR + N_RATIOS

EXPR_LO = torch.tensor([lo for _, lo, _ in EXPRESSION_RANGES])
EXPR_HI = torch.tensor([hi for _, _, hi in EXPRESSION_RANGES])


def to_input(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, 64, 64), bilinear with antialiasing when shrinking; differentiable."""
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


def _cbr(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.a = _cbr(cin, cout, stride)
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b(self.a(x)) + self.skip(x))


def backbone(arch: str) -> tuple[nn.Module, int]:
    """Feature extractor -> (B, C, 4, 4). Returns the module and C."""
    if arch == "plain":
        widths = (32, 48, 96, 160)
        m = nn.Sequential(
            _cbr(3, widths[0], 2, 5),
            _cbr(widths[0], widths[1], 2),
            _cbr(widths[1], widths[1]),
            _cbr(widths[1], widths[2], 2),
            _cbr(widths[2], widths[2]),
            _cbr(widths[2], widths[3], 2),
        )
        return m, widths[3]
    if arch == "res":
        widths = (24, 40, 80, 144)
        m = nn.Sequential(
            _cbr(3, widths[0], 2, 3),
            _Res(widths[0], widths[1], 2),
            _Res(widths[1], widths[2], 2),
            _Res(widths[2], widths[3], 2),
        )
        return m, widths[3]
    raise ValueError(f"unknown analyser architecture '{arch}'")


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (to_input(x) - 0.5) / 0.25


class IdentityNet(nn.Module):
    """Image -> 512-d L2-normalised identity embedding."""

    def __init__(self, arch: str = "plain", dim: int = 512):
        super().__init__()
        self.arch, self.dim = arch, dim
        self.norm = _Normalize()
        self.features, c = backbone(arch)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, 512), nn.BatchNorm1d(512), nn.ReLU(True))
        self.out = nn.Linear(512, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.out(self.head(self.features(self.norm(x)))), dim=-1)


class FaceNet(nn.Module):
    """Image -> presence logit, face box, five landmarks, expression factors and landmark ratios (all at once)."""

    def __init__(self, arch: str = "plain"):
        super().__init__()
        self.arch = arch
        self.norm = _Normalize()
        self.features, c = backbone(arch)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, 256), nn.ReLU(True), nn.Linear(256, FACE_OUTPUTS))
        self.register_buffer("ratio_mean", torch.zeros(N_RATIOS))
        self.register_buffer("ratio_std", torch.ones(N_RATIOS))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.norm(x)))

    def decode(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs -> named quantities in their natural units (box and landmarks as image fractions)."""
        lo, hi = EXPR_LO.to(raw), EXPR_HI.to(raw)
        return {
            "presence": torch.sigmoid(raw[:, OUT_PRESENCE].squeeze(1)),
            "box": raw[:, OUT_BOX] * 0.25 + 0.5,
            "landmarks": (raw[:, OUT_LMK] * 0.25 + 0.5).view(-1, 5, 2),
            "expression": lo + (hi - lo) * (raw[:, OUT_EXPR] * 0.5 + 0.5),
            "ratios": raw[:, OUT_RATIOS] * self.ratio_std + self.ratio_mean,
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.decode(self.raw(x))
