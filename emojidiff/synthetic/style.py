"""A style classifier of the synthetic world (background colour, shading, palette, glasses, hat), used to score
whether generated images follow the style words of their prompts. Evaluation only."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .factors import BACKGROUNDS, GLASSES, PALETTES, SHADINGS, Style
from .nets import _Normalize, backbone

STYLE_HEADS = {
    "background": BACKGROUNDS,
    "shading": SHADINGS,
    "palette": PALETTES,
    "glasses": GLASSES,
    "hat": ("no", "yes"),
}


def style_labels(s: Style) -> dict[str, int]:
    return {
        "background": BACKGROUNDS.index(s.background),
        "shading": SHADINGS.index(s.shading),
        "palette": PALETTES.index(s.palette),
        "glasses": GLASSES.index(s.glasses),
        "hat": int(s.hat != "none"),
    }


class StyleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = _Normalize()
        self.features, c = backbone("res")
        self.heads = nn.ModuleDict({k: nn.Linear(c, len(v)) for k, v in STYLE_HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(self.norm(x)).mean(dim=(2, 3))
        return {k: h(f) for k, h in self.heads.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[dict[str, str]]:
        logits = self(x)
        idx = {k: v.argmax(1).tolist() for k, v in logits.items()}
        return [{k: STYLE_HEADS[k][idx[k][i]] for k in STYLE_HEADS} for i in range(len(x))]


def _batch(rng, n: int, id_range=(50_000, 100_000)):
    from .factors import Identity, Portrait, sample_expression
    from .render import render_array
    from .train_analysers import _to_tensor

    ps = []
    for _ in range(n):
        iid = int(rng.integers(*id_range))
        ps.append(Portrait(iid, Identity.from_id(iid), sample_expression(rng), Style.sample(rng)))
    x = _to_tensor(render_array(ps, 64))
    labels = {k: torch.tensor([style_labels(p.style)[k] for p in ps]) for k in STYLE_HEADS}
    return x, labels


def train_style(out: str | Path, steps: int = 600, log=print, batch: int | None = None) -> dict:
    from safetensors.torch import save_file

    from .train_analysers import HELDOUT, _augment

    batch = batch or (64 if steps >= 50 else 8)
    torch.manual_seed(5)
    rng = np.random.default_rng(5)
    gen = torch.Generator().manual_seed(6)
    net = StyleNet().train()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    t0 = time.time()
    for step in range(steps):
        x, labels = _batch(rng, batch)
        x, _, _ = _augment(x, gen, 1.5)
        out_ = net(x)
        loss = sum(F.cross_entropy(out_[k], labels[k]) for k in STYLE_HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(f"[style] step {step}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    net.eval()
    x, labels = _batch(np.random.default_rng(999), 500 if steps >= 50 else 20, HELDOUT)
    with torch.no_grad():
        logits = net(x)
    acc = {k: float((logits[k].argmax(1) == labels[k]).float().mean()) for k in STYLE_HEADS}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sd = {
        k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in net.state_dict().items()
    }
    save_file(sd, str(out / "style.safetensors"))
    (out / "style.json").write_text(json.dumps({"steps": steps, "batch": batch, "heldout_accuracy": acc}, indent=2))
    log(f"[style] held-out accuracy {acc}")
    return {"heldout_accuracy": acc, "steps": steps}


def load_style_net(path: str | Path) -> StyleNet:
    from safetensors.torch import load_file

    net = StyleNet()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return net.eval()
