"""IResNet, the backbone of InsightFace's ``arcface_torch``, so that its public checkpoints load as they are.

The module and parameter names match ``arcface_torch/backbones/iresnet.py`` (``conv1``, ``bn1``, ``prelu``,
``layer1``…``layer4`` of ``IBasicBlock``, ``bn2``, ``fc``, ``features``), so ``load_state_dict`` takes their
``backbone.pth`` files unchanged. Input: RGB 112x112 aligned with the ArcFace template, scaled to [-1, 1].
Output: 512-d features (not normalised). Fully differentiable: use it for identity losses.

Checkpoints are loaded safely: ``.safetensors`` directly, ``.pth``/``.pt`` only through
``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelMissingError

#: blocks per stage of the published depths
DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = self.downsample(x) if self.downsample is not None else x
        return out + identity


class IResNet(nn.Module):
    fc_scale = 7 * 7

    def __init__(self, layers: tuple[int, int, int, int] = DEPTHS[50], num_features: int = 512, dropout: float = 0.0):
        super().__init__()
        self.layers_cfg = tuple(int(n) for n in layers)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(planes, eps=1e-05)
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if suffix in (".pth", ".pt", ".bin", ".ckpt"):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise ModelMissingError(f"ArcFace checkpoint '{path}' must be a .safetensors or .pth file")
    except ModelMissingError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt, or a pickle with code in it (refused by weights_only)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelMissingError(
            f"ArcFace checkpoint '{path}' could not be loaded safely ({type(e).__name__}: {first[:160]})"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "backbone"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelMissingError(f"ArcFace checkpoint '{path}' does not hold a tensor state dict")
    # strip wrappers such as 'module.' (DDP) or 'backbone.'
    out = {}
    for k, v in obj.items():
        k = re.sub(r"^(module\.|backbone\.)+", "", k)
        out[k] = v
    return out


def infer_layers(state: dict[str, torch.Tensor]) -> tuple[int, int, int, int]:
    """Blocks per stage, read from the checkpoint's keys (so any published depth loads)."""
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not idx:
            raise ModelMissingError(f"the checkpoint has no 'layer{stage}.*' weights: not an arcface_torch IResNet")
        counts.append(max(idx) + 1)
    return tuple(counts)  # type: ignore[return-value]


def load_iresnet(path: str | os.PathLike) -> IResNet:
    """Build an IResNet of the checkpoint's depth and load it (eval mode, CPU)."""
    p = Path(path)
    if not p.is_file():
        raise ModelMissingError(f"ArcFace checkpoint '{p}' does not exist")
    state = _read_state_dict(p)
    layers = infer_layers(state)
    num_features = int(state["features.weight"].shape[0]) if "features.weight" in state else 512
    net = IResNet(layers, num_features=num_features)
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelMissingError(
            f"ArcFace checkpoint '{p}' does not match the IResNet{sum(layers) * 2 + 2} layout "
            f"(missing {len(missing)} keys e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]})"
        )
    return net.eval()
