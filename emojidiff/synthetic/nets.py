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


#: Part crops, in units of the distance between the eye centres d: (half-width, half-height, dx, dy) of the crop
#: around a landmark. Eyes: the eye and its brow (brows sit up to ~0.7 d above the eye centre). Mouth: both lips,
#: the corners wherever smile and smirk pull them, the open mouth.
EYE_CROP = (0.42, 0.55, 0.0, -0.27)
MOUTH_CROP = (0.85, 0.6, 0.0, 0.1)
#: The "zoom" heads' (spatial heads plus a third CNN) extra look at each eye alone, lids and iris without the brow
#: (eye half-widths are 0.19-0.28 d, half-heights 0.14-0.21 d), at about twice the eye crop's magnification
ZOOM_EYE_CROP = (0.32, 0.24, 0.0, 0.0)
PART_SIZE = 24
#: Part-head architectures (:class:`PartHeads`); a set's config.json names its own (:func:`saved_parts_arch`)
PART_ARCHS = ("pooled", "spatial", "zoom", "keypoint")
#: Maps the "keypoint" heads place on each crop (:class:`SpatialSoftArgmax`)
N_KEYPOINTS = 16


def saved_parts_arch(config: dict) -> str:
    """The part-head architecture an analyser set's config.json names; sets from before the choice existed: pooled."""
    return config.get("face_parts_arch", "pooled")


def part_crops(x: torch.Tensor, landmarks: torch.Tensor, size: int = PART_SIZE, zoom: bool = False) -> torch.Tensor:
    """Left eye, right eye (mirrored, so it looks like a left one) and mouth, cut around the landmarks and resampled
    to ``size`` x ``size``: (B, 3, 3, size, size); with ``zoom``, then both eyes again, closer (:data:`ZOOM_EYE_CROP`):
    (B, 5, 3, size, size). Differentiable in the images and the landmarks (image fractions).

    Hand-written because it is a few lines of ``affine_grid`` / ``grid_sample``; no library offers landmark crops."""
    eye_l, eye_r = landmarks[:, 0], landmarks[:, 1]
    mouth = (landmarks[:, 3] + landmarks[:, 4]) / 2
    d = (eye_r - eye_l).norm(dim=-1).clamp(min=1e-3)
    crops = []
    cuts = [(eye_l, EYE_CROP, 1.0), (eye_r, EYE_CROP, -1.0), (mouth, MOUTH_CROP, 1.0)]
    if zoom:
        cuts += [(eye_l, ZOOM_EYE_CROP, 1.0), (eye_r, ZOOM_EYE_CROP, -1.0)]
    for centre, (hw, hh, dx, dy), mirror in cuts:
        theta = x.new_zeros(len(x), 2, 3)
        theta[:, 0, 0] = 2 * hw * d * mirror  # output [-1, 1] -> input [-1, 1] coordinates (image fraction * 2 - 1)
        theta[:, 1, 1] = 2 * hh * d
        theta[:, 0, 2] = 2 * (centre[:, 0] + mirror * dx * d) - 1
        theta[:, 1, 2] = 2 * (centre[:, 1] + dy * d) - 1
        grid = F.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
        crops.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False))
    return torch.stack(crops, 1)


#: What each part head reads, by factor name. The right eye is seen mirrored, as a left one: its gaze x is negated.
EYE_FACTORS = ("eye_open_{}", "brow_raise_{}", "brow_tilt_{}", "gaze_x", "gaze_y", "cheek_raise")
MOUTH_FACTORS = ("smile", "mouth_open", "smirk", "pout", "cheek_raise")
ZOOM_FACTORS = ("eye_open_{}", "gaze_x", "gaze_y")
N_PART_OUT = 2 * len(EYE_FACTORS) + len(MOUTH_FACTORS)


def part_targets(target: torch.Tensor, signed: bool = True, zoom: bool = False) -> torch.Tensor:
    """Expression targets (B, N_EXPR) in the raw [-1, 1] scale -> the part heads' targets (B, N_PART_OUT):
    left eye, right eye (mirrored: gaze x negated, unless ``signed`` is False, as for loss weights), mouth; with
    ``zoom``, then the close looks' factors (:data:`ZOOM_FACTORS`), left eye and right eye."""
    from .factors import EXPRESSION_NAMES

    def eye(factors: tuple[str, ...], side: str) -> list[torch.Tensor]:
        cols = [target[:, EXPRESSION_NAMES.index(f.format(side))] for f in factors]
        return [-c if (signed and f == "gaze_x" and side == "r") else c for f, c in zip(factors, cols, strict=True)]

    cols = eye(EYE_FACTORS, "l") + eye(EYE_FACTORS, "r")
    cols += [target[:, EXPRESSION_NAMES.index(f)] for f in MOUTH_FACTORS]
    if zoom:
        cols += eye(ZOOM_FACTORS, "l") + eye(ZOOM_FACTORS, "r")
    return torch.stack(cols, 1)


def _part_trunk() -> list[nn.Module]:
    """Every part CNN's layers after its full-resolution first one: 32 channels at the crop's size -> 128 at 3 x 3."""
    return [_cbr(32, 48, 2), _cbr(48, 48), _cbr(48, 96, 2), _cbr(96, 96), _cbr(96, 128, 2)]


class SpatialSoftArgmax(nn.Module):
    """Feature maps (B, K, H, W) -> where each map's softmax over its pixels is, on average: (B, 2K) coordinates in
    [-1, 1] of the map (all x, then all y), sub-pixel by construction. Regression heads read positions this way in
    keypoint work (the spatial soft arg-max of Levine et al. 2016, integral regression of Sun et al. 2018): a CNN's
    strided layers and pooling keep where an edge is only coarsely, and gaze moves the iris by about a pixel over
    its whole range. Each map has a learned sharpness, starting at 1.

    Hand-written: a few lines; kornia has one (``spatial_soft_argmax2d``) but is not worth a dependency for them."""

    def __init__(self, k: int):
        super().__init__()
        self.log_sharpness = nn.Parameter(torch.zeros(1, k, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, k, h, w = f.shape
        p = torch.softmax(f.flatten(2) * self.log_sharpness.exp(), -1).view(b, k, h, w)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=f.device, dtype=f.dtype)
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=f.device, dtype=f.dtype)
        return torch.cat([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], 1)


class _KeypointCNN(nn.Module):
    """The "spatial" part CNN plus :data:`N_KEYPOINTS` soft arg-max positions found at the crop's full resolution
    (a 5 x 5 receptive field), read by the same head beside the flattened features."""

    def __init__(self, n_out: int):
        super().__init__()
        self.stem = _cbr(3, 32)
        self.features = nn.Sequential(*_part_trunk(), nn.Flatten())
        self.keypoints = nn.Sequential(_cbr(32, 32), nn.Conv2d(32, N_KEYPOINTS, 1), SpatialSoftArgmax(N_KEYPOINTS))
        self.head = nn.Sequential(nn.Linear(128 * 9 + 2 * N_KEYPOINTS, 128), nn.ReLU(True), nn.Linear(128, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(torch.cat([self.features(h), self.keypoints(h)], 1))


class PartHeads(nn.Module):
    """A second look at the eyes and the mouth at full resolution, after the whole-face net found them.

    The whole-face backbone halves the resolution in its first layer, and gaze moves the iris by less than a pixel
    at 64 x 64. One small CNN reads each eye (the right one mirrored, so one CNN serves both) and predicts that eye's
    factors, another the mouth's; each is supervised directly (:func:`part_targets`). A linear fusion then adds a
    correction to the whole-face net's raw expression outputs from both readings; it starts at zero, so a trained
    face net's readings are the starting point.

    ``arch`` "pooled" (the v4 sets') averages each CNN's last 3 x 3 map before its linear layers; "spatial" flattens
    it, so the position of the iris or the lips inside the crop reaches the output directly rather than through
    what padding leaves of it in an average. "zoom" is "spatial" with a third CNN (spatial too) that reads each eye
    again from a closer crop (lids and iris filling it), for its opening and gaze. "keypoint" is "zoom" with each
    CNN also reading sub-pixel positions of its own full-resolution maps (:class:`_KeypointCNN`)."""

    def __init__(self, arch: str = "pooled"):
        super().__init__()
        if arch not in PART_ARCHS:
            raise ValueError(f"part-head architecture '{arch}' is not one of {PART_ARCHS}")
        self.arch = arch
        flatten = arch in ("spatial", "zoom", "keypoint")
        pool, n_flat = (nn.Identity(), 128 * 9) if flatten else (nn.AdaptiveAvgPool2d(1), 128)

        def cnn(n_out: int) -> nn.Sequential:
            head = (pool, nn.Flatten(), nn.Linear(n_flat, 128), nn.ReLU(True), nn.Linear(128, n_out))
            return nn.Sequential(_cbr(3, 32), *_part_trunk(), *head)

        make = _KeypointCNN if arch == "keypoint" else cnn
        self.eye, self.mouth = make(len(EYE_FACTORS)), make(len(MOUTH_FACTORS))
        self.zoom = make(len(ZOOM_FACTORS)) if arch in ("zoom", "keypoint") else None
        self.n_out = N_PART_OUT + (2 * len(ZOOM_FACTORS) if self.zoom is not None else 0)
        self.fuse = nn.Linear(N_EXPR + self.n_out, N_EXPR)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor, expr: torch.Tensor):
        """Normalised images, landmarks (B, 5, 2) as image fractions, the face net's raw expression (B, N_EXPR) ->
        (the correction to add to it, the part heads' own raw readings (B, ``n_out``), laid out as :meth:`targets`)."""
        c = part_crops(x, landmarks, zoom=self.zoom is not None)
        b = len(x)
        eyes = self.eye(c[:, :2].reshape(2 * b, *c.shape[2:])).view(b, 2 * len(EYE_FACTORS))
        read = [eyes, self.mouth(c[:, 2])]
        if self.zoom is not None:
            read.append(self.zoom(c[:, 3:].reshape(2 * b, *c.shape[2:])).view(b, 2 * len(ZOOM_FACTORS)))
        parts = torch.cat(read, 1)
        return self.fuse(torch.cat([expr, parts], 1)), parts

    def targets(self, target: torch.Tensor, signed: bool = True) -> torch.Tensor:
        """:func:`part_targets` in this architecture's layout (the readings :meth:`forward` returns)."""
        return part_targets(target, signed, zoom=self.zoom is not None)


class FaceNet(nn.Module):
    """Image -> presence logit, face box, five landmarks, expression factors and landmark ratios (all at once).

    With ``parts``, :class:`PartHeads` of architecture ``parts_arch`` refine the expression factors from crops around
    the predicted landmarks."""

    def __init__(self, arch: str = "plain", parts: bool = False, parts_arch: str = "pooled"):
        super().__init__()
        self.arch = arch
        self.norm = _Normalize()
        self.features, c = backbone(arch)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, 256), nn.ReLU(True), nn.Linear(256, FACE_OUTPUTS))
        self.register_buffer("ratio_mean", torch.zeros(N_RATIOS))
        self.register_buffer("ratio_std", torch.ones(N_RATIOS))
        self.parts = PartHeads(parts_arch) if parts else None

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.raw_and_parts(x)[0]

    def raw_and_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw outputs, and the part heads' own raw readings (None without part heads)."""
        xn = self.norm(x)
        raw = self.head(self.features(xn))
        if self.parts is None:
            return raw, None
        lmk = (raw[:, OUT_LMK] * 0.25 + 0.5).view(-1, 5, 2)
        delta, parts = self.parts(xn, lmk, raw[:, OUT_EXPR])
        expr = raw[:, OUT_EXPR] + delta
        return torch.cat([raw[:, : OUT_EXPR.start], expr, raw[:, OUT_EXPR.stop :]], 1), parts

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
