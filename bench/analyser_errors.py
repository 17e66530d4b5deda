"""Where the synthetic expression analysers err: MAE per factor (fraction of its range) by style condition.

The same 1000 held-out renders as ``evaluate_face`` (gaze weighted by eye visibility), split by glasses, hat,
shading and palette, to tell occlusion from plain imprecision:

    OMP_NUM_THREADS=1 python bench/analyser_errors.py --json bench/results/analyser_errors.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emojidiff.synthetic.analysers import SyntheticAnalysers
from emojidiff.synthetic.factors import EXPRESSION_NAMES
from emojidiff.synthetic.nets import EXPR_HI, EXPR_LO, INPUT_SIZE
from emojidiff.synthetic.render import render_array
from emojidiff.synthetic.train_analysers import HELDOUT, _expr_weights, _sample, _to_tensor, face_targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=["train", "eval"], default="train")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(54321)  # evaluate_face's held-out draw
    ps = [_sample(rng, HELDOUT) for _ in range(a.n)]
    with torch.no_grad():
        pred = SyntheticAnalysers(a.kind).expression(_to_tensor(render_array(ps, INPUT_SIZE)))
    truth = face_targets(ps)["expression"]
    err = ((pred - truth).abs() / (EXPR_HI - EXPR_LO)).numpy()
    w = _expr_weights(truth).numpy()
    groups = {
        "all": [True] * len(ps),
        "glasses": [p.style.glasses != "none" for p in ps],
        "hat": [p.style.hat != "none" for p in ps],
        "no glasses, no hat": [p.style.glasses == "none" and p.style.hat == "none" for p in ps],
        **{f"shading {s}": [p.style.shading == s for p in ps] for s in ("flat", "shaded", "sketch")},
        "monochrome": [p.style.palette == "monochrome" for p in ps],
    }
    res = {"kind": a.kind, "n": a.n, "groups": {}}
    for name, mask in groups.items():
        m = np.array(mask)
        mae = (err * w)[m].sum(0) / w[m].sum(0)
        res["groups"][name] = {"n": int(m.sum()), "mean": float(mae.mean()),
                               "per_factor": dict(zip(EXPRESSION_NAMES, map(float, mae), strict=True))}  # fmt: skip
        print(f"{name:20s} n={m.sum():4d} mean {100 * mae.mean():4.1f} %  " + " ".join(f"{100 * v:4.1f}" for v in mae))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
