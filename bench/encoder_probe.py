"""How much of each expression factor the synthetic world's frozen image encoder exposes to the expression branch.

Renders N portraits of training-range people, takes the masked face crop the expression branch sees (synthetic face
backend), runs the base's image encoder, and fits a ridge regression from the features the resampler reads
(``hidden_states[-2]``, all 65 tokens flattened) to the true expression factors; R² on held-out renders per factor.
A linear probe is a lower bound on what the (non-linear) resampler can extract, but a factor with R² near 0 is one
the branch has little to work with.

    OMP_NUM_THREADS=1 python bench/encoder_probe.py --json bench/results/encoder_probe_synthetic.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500, help="renders (the last fifth is held out)")
    ap.add_argument("--ridge", type=float, default=1000.0, help="ridge penalty on standardised features")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from transformers import CLIPVisionModelWithProjection

    from emojidiff.adapter.core import BUNDLED_BASES
    from emojidiff.adapter.image_encoder import image_processor
    from emojidiff.synthetic.analysers import SyntheticFaceAnalyzer
    from emojidiff.synthetic.dataset import sample_portraits
    from emojidiff.synthetic.factors import EXPRESSION_NAMES
    from emojidiff.synthetic.render import render

    enc = CLIPVisionModelWithProjection.from_pretrained(BUNDLED_BASES["synthetic"] / "image_encoder").eval()
    proc = image_processor(enc.config.image_size)
    fa = SyntheticFaceAnalyzer("train")
    portraits = sample_portraits(args.n, args.seed)
    feats = []
    with torch.no_grad():
        for k in range(0, args.n, 100):
            crops = [fa.expression_crop(im, fa.detect(im)[0]) for im in render(portraits[k : k + 100], 64)]
            px = proc(images=crops, return_tensors="pt").pixel_values
            feats.append(enc(px, output_hidden_states=True).hidden_states[-2].flatten(1).numpy())
    x = np.concatenate(feats).astype(np.float64)
    y = np.stack([p.expression.to_vector() for p in portraits]).astype(np.float64)
    n = int(args.n * 0.8)
    mu, sd = x[:n].mean(0), x[:n].std(0) + 1e-6
    a = (x - mu) / sd
    w = np.linalg.solve(a[:n].T @ a[:n] + args.ridge * np.eye(a.shape[1]), a[:n].T @ (y[:n] - y[:n].mean(0)))
    pred = a[n:] @ w + y[:n].mean(0)
    r2 = 1 - ((pred - y[n:]) ** 2).sum(0) / ((y[n:] - y[n:].mean(0)) ** 2).sum(0)
    r2_by_factor = dict(zip(EXPRESSION_NAMES, np.round(r2, 3).tolist(), strict=True))
    result = {"n": args.n, "heldout": args.n - n, "ridge": args.ridge, "r2": r2_by_factor}
    for k, v in result["r2"].items():
        print(f"{k:14s} {v:6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
