"""How does each analyser set's face-presence head score faces that are softer than clean renders?

Generated samples are smoother than the renders the heads were trained on. This scores held-out renders
(``HELDOUT_IDS``, seed 777) clean, Gaussian-blurred (PIL) and round-tripped through a base model's VAE — all of them
faces, so every rejection is a false negative — and the face net's own non-face negatives, clean and blurred, so
every acceptance is a false positive:

    python bench/presence_robustness.py --base runs/world_timed/base --root V2_ANALYSERS \\
        --json bench/results/presence_robustness_v3.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from emojidiff.synthetic.analysers import PRESENCE_THRESHOLD, SyntheticAnalysers
from emojidiff.synthetic.base_model import load_base_pipeline
from emojidiff.synthetic.bench import vae_round_trip
from emojidiff.synthetic.dataset import HELDOUT_IDS, sample_portraits
from emojidiff.synthetic.nets import INPUT_SIZE
from emojidiff.synthetic.render import render_array
from emojidiff.synthetic.train_analysers import _negatives, _to_tensor

BLURS = (0.5, 1.0, 1.5, 2.5)


def _blur(x: torch.Tensor, radius: float) -> torch.Tensor:
    out = []
    for img in x:
        arr = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        arr = np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", action="append", default=[], help="another analyser root (holding train/ and eval/)")
    ap.add_argument("--base", action="append", default=[], help="a base whose VAE round trip to score (and shipped)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    portraits = sample_portraits(a.n, 777, HELDOUT_IDS)
    clean = _to_tensor(render_array(portraits, INPUT_SIZE))
    negatives = _negatives(clean, torch.Generator().manual_seed(0))
    faces = {"clean": clean, **{f"blur {r:g} px": _blur(clean, r) for r in BLURS}}
    for base in [None, *a.base]:
        faces[f"VAE round trip ({base or 'shipped base'})"] = vae_round_trip(load_base_pipeline(base).vae, clean)
    non_faces = {"negatives": negatives, "negatives, blur 1 px": _blur(negatives, 1.0)}

    judges = {"shipped train": SyntheticAnalysers("train"), "shipped eval": SyntheticAnalysers("eval")}
    for root in a.root:
        if not Path(root, "eval", "face.safetensors").exists():
            raise SystemExit(f"--root {root}: no eval/face.safetensors there")
        for kind in ("train", "eval"):
            judges[f"{root} {kind}"] = SyntheticAnalysers(kind, Path(root, kind))
    out: dict = {"n": a.n, "threshold": PRESENCE_THRESHOLD, "faces_accepted": {}, "non_faces_rejected": {}}
    # the rates, and the margin: the 1st percentile of the faces' scores, the 99th of the non-faces'
    out["faces_score_p01"], out["non_faces_score_p99"] = {}, {}
    with torch.no_grad():
        for name, judge in judges.items():
            f = {k: judge.presence(v).numpy() for k, v in faces.items()}
            nf = {k: judge.presence(v).numpy() for k, v in non_faces.items()}
            out["faces_accepted"][name] = {k: float((v >= PRESENCE_THRESHOLD).mean()) for k, v in f.items()}
            out["non_faces_rejected"][name] = {k: float((v < PRESENCE_THRESHOLD).mean()) for k, v in nf.items()}
            out["faces_score_p01"][name] = {k: round(float(np.percentile(v, 1)), 3) for k, v in f.items()}
            out["non_faces_score_p99"][name] = {k: round(float(np.percentile(v, 99)), 3) for k, v in nf.items()}
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
