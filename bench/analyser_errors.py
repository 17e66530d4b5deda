"""Where the synthetic expression analysers err: MAE per factor (fraction of its range) by condition.

The same 1000 held-out renders as ``evaluate_face`` (gaze weighted by eye visibility), split by glasses, hat,
shading and palette (occlusion or plain imprecision?) and by how the expression was drawn: a jittered template,
whose factors move together as the template's do, or a uniformly random vector, where each factor must be read on
its own. ``chance`` is the error of always answering the held-out median, the score of a net that reads nothing:

    OMP_NUM_THREADS=1 python bench/analyser_errors.py --json bench/results/analyser_errors.json
    OMP_NUM_THREADS=1 python bench/analyser_errors.py --root runs/world/analysers/train   # another trained set

``--vae-round-trip`` reads the renders after a round trip through the shipped base's VAE (or ``--vae-base``'s)
instead (encoded and decoded again): the softness every generated image has, on portraits whose factors are known
exactly, so how well a set reads generated faces can be told apart from how well it reads clean renders.

``--flip-average`` also reads each portrait mirrored and averages the two readings (the mirrored one mapped back with
``Expression.mirrored``'s swap of left and right): test-time augmentation, to see how much of the error is noise.

``--average-with ROOT`` (repeatable) averages the readings of other sets: an ensemble, whose gain tells errors that
differ between nets from errors they share.

Each group also records, per factor, the least-squares ``slope`` of the reading on the truth (1 for a reader without
bias; below 1 when readings shrink towards the middle, as a net does where it cannot tell a factor's value).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emojidiff.synthetic.analysers import SyntheticAnalysers
from emojidiff.synthetic.factors import EXPRESSION_NAMES, Expression
from emojidiff.synthetic.nets import EXPR_HI, EXPR_LO, INPUT_SIZE
from emojidiff.synthetic.render import render_array
from emojidiff.synthetic.train_analysers import HELDOUT, _expr_weights, _to_tensor, face_targets, sample_with_source


def mirrored_back(pred: torch.Tensor) -> torch.Tensor:
    """Readings of mirrored images (B, 13) -> readings of the originals, as ``Expression.mirrored`` maps them."""
    return torch.stack([torch.tensor(Expression.from_vector(v).mirrored().to_vector()) for v in pred.numpy()])


def slopes(pred: np.ndarray, truth: np.ndarray, w: np.ndarray) -> list[float | None]:
    """Weighted least-squares slope of each factor's reading on its truth (None where the truth does not vary)."""
    out = []
    for j in range(truth.shape[1]):
        wj = w[:, j]
        t, r = truth[:, j], pred[:, j]
        tc = t - (wj * t).sum() / max(wj.sum(), 1e-9)
        var = (wj * tc * tc).sum()
        out.append(float((wj * tc * r).sum() / var) if var > 1e-9 else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=["train", "eval"], default="train")
    ap.add_argument("--root", default=None, help="an analyser set's folder (default: the shipped --kind set)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--flip-average", action="store_true", help="average with the reading of the mirrored image")
    ap.add_argument("--vae-round-trip", action="store_true", help="read the renders after the base VAE's round trip")
    ap.add_argument("--vae-base", default=None, help="the base whose VAE --vae-round-trip uses (default: shipped)")
    ap.add_argument("--average-with", action="append", default=[], metavar="ROOT", help="another set to average with")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(54321)  # evaluate_face's held-out draw
    ps, uniform = zip(*(sample_with_source(rng, HELDOUT) for _ in range(a.n)), strict=True)
    x = _to_tensor(render_array(list(ps), INPUT_SIZE))
    if a.vae_round_trip:
        from emojidiff.synthetic.base_model import load_base_pipeline
        from emojidiff.synthetic.bench import vae_round_trip

        with torch.no_grad():
            x = vae_round_trip(load_base_pipeline(a.vae_base).vae, x)
    analysers = SyntheticAnalysers(a.kind, a.root)
    with torch.no_grad():
        pred = analysers.expression(x)
        if a.flip_average:
            pred = (pred + mirrored_back(analysers.expression(x.flip(-1))).to(pred.dtype)) / 2
        for root in a.average_with:
            pred = pred + SyntheticAnalysers(a.kind, root).expression(x)
        pred = pred / (1 + len(a.average_with))
    truth = face_targets(list(ps))["expression"]
    span = EXPR_HI - EXPR_LO
    err = ((pred - truth).abs() / span).numpy()
    chance = ((truth.median(0).values - truth).abs() / span).numpy()
    w = _expr_weights(truth).numpy()
    groups = {
        "all": [True] * len(ps),
        "glasses": [p.style.glasses != "none" for p in ps],
        "hat": [p.style.hat != "none" for p in ps],
        "no glasses, no hat": [p.style.glasses == "none" and p.style.hat == "none" for p in ps],
        **{f"shading {s}": [p.style.shading == s for p in ps] for s in ("flat", "shaded", "sketch")},
        "monochrome": [p.style.palette == "monochrome" for p in ps],
        # pout in [2/3, 1] with the mouth closed cannot be told from a narrower, fuller-lipped mouth
        # (bench/pout_identifiability.py): the part of the pout error no analyser can remove
        "pout >= 2/3, mouth closed": [p.expression.pout >= 2 / 3 and p.expression.mouth_open == 0 for p in ps],
        "not (pout >= 2/3, mouth closed)": [
            not (p.expression.pout >= 2 / 3 and p.expression.mouth_open == 0) for p in ps
        ],
        "template expressions": [not u for u in uniform],
        "uniform expressions": list(uniform),
        # gaze is hidden as the lids close, and read least surely far from straight ahead
        **{
            f"uniform, more open eye {lo}-{hi}": [
                u and lo <= max(p.expression.eye_open_l, p.expression.eye_open_r) < (hi if hi < 1 else 2)
                for p, u in zip(ps, uniform, strict=True)
            ]
            for lo, hi in ((0.3, 0.5), (0.5, 0.7), (0.7, 1))
        },
        "uniform, |gaze y| >= 0.5": [u and abs(p.expression.gaze_y) >= 0.5 for p, u in zip(ps, uniform, strict=True)],
    }
    res = {"kind": a.kind, "root": a.root, "average_with": a.average_with, "n": a.n, "flip_average": a.flip_average}
    res["groups"] = {}
    pred_np, truth_np = pred.numpy(), truth.numpy()
    res["vae_round_trip"] = a.vae_round_trip and (a.vae_base or "shipped")
    print(" " * 41 + " ".join(f"{n[:5]:>5s}" for n in EXPRESSION_NAMES))
    for name, mask in groups.items():
        m = np.array(mask)
        for label, e in ((name, err), (f"{name}, chance", chance)):
            if label.endswith("chance") and "expressions" not in name and name != "all":
                continue
            mae = (e * w)[m].sum(0) / w[m].sum(0)
            per_factor = dict(zip(EXPRESSION_NAMES, map(float, mae), strict=True))
            res["groups"][label] = {"n": int(m.sum()), "mean": float(mae.mean()), "max": float(mae.max())}
            res["groups"][label]["per_factor"] = per_factor
            if not label.endswith("chance"):
                slope = slopes(pred_np[m], truth_np[m], w[m])
                res["groups"][label]["slope"] = dict(zip(EXPRESSION_NAMES, slope, strict=True))
            print(f"{label[:30]:30s} {100 * mae.mean():4.1f} % | " + " ".join(f"{100 * v:5.1f}" for v in mae))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
