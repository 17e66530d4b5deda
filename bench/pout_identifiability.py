"""Pout above 2/3 cannot be read from one closed-mouth render: two people, one pouting 0.7 and one 1.0, render to the
same pixels.

In ``render.face_geometry`` pout narrows the mouth by (1 - 0.4 pout), thickens the lips by (1 + 1.2 pout) and fades
in a lip blob whose opacity saturates at pout = 2/3; the person's own ``mouth_width`` and ``lip_fullness`` scale the
same two lengths. So, with the mouth closed, any pout in [2/3, 1] can be traded for another one against those two
identity factors (as long as they stay in [0, 1]). Whatever an analyser answers for such a pair, it is off by at
least half their pout difference on one of them: a floor under the per-factor error on any held-out set where such
pouts occur (the uniform expression draws: a third of them have pout >= 2/3).

    OMP_NUM_THREADS=1 python bench/pout_identifiability.py --json bench/results/pout_identifiability.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch


def matched_identity(identity, pout_from: float, pout_to: float):
    """The identity whose mouth, pouting ``pout_to``, has the same width and lip thickness as ``identity``'s pouting
    ``pout_from`` (render.py: width (0.32 + 0.22 mouth_width)(1 - 0.4 pout), lips (0.008 + 0.016 lip_fullness)(1 +
    1.2 pout))."""
    width = (0.32 + 0.22 * identity.mouth_width) * (1 - 0.4 * pout_from) / (1 - 0.4 * pout_to)
    lips = (0.008 + 0.016 * identity.lip_fullness) * (1 + 1.2 * pout_from) / (1 + 1.2 * pout_to)
    return dataclasses.replace(identity, mouth_width=(width - 0.32) / 0.22, lip_fullness=(lips - 0.008) / 0.016)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="pairs (random held-out people, styles and other factors)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from emojidiff.synthetic.analysers import SyntheticAnalysers
    from emojidiff.synthetic.dataset import HELDOUT_IDS
    from emojidiff.synthetic.factors import EXPRESSION_NAMES, Identity, Portrait, Style, sample_expression
    from emojidiff.synthetic.render import render_array
    from emojidiff.synthetic.train_analysers import _to_tensor

    rng = np.random.default_rng(0)
    pairs = []
    while len(pairs) < a.n:
        iid = int(rng.integers(*HELDOUT_IDS))
        ident = Identity.from_id(iid)
        p1, p2 = sorted(rng.uniform(2 / 3, 1.0, size=2))
        other = matched_identity(ident, p1, p2)
        if not (0 <= other.mouth_width <= 1 and 0 <= other.lip_fullness <= 1) or p2 - p1 < 0.1:
            continue
        expr = sample_expression(rng)
        style = Style.sample(rng)
        e1 = dataclasses.replace(expr, pout=float(p1), mouth_open=0.0)
        e2 = dataclasses.replace(expr, pout=float(p2), mouth_open=0.0)
        pairs.append((Portrait(iid, ident, e1, style), Portrait(iid, other, e2, style)))
    x = render_array([p for pair in pairs for p in pair], 64)
    diff = np.abs(x[0::2] - x[1::2]).reshape(len(pairs), -1).max(1)
    gap = np.array([q.expression.pout - p.expression.pout for p, q in pairs])
    res = {"n_pairs": len(pairs), "max_pixel_difference": float(diff.max()), "mean_pout_gap": float(gap.mean())}
    t = _to_tensor(x)
    k = EXPRESSION_NAMES.index("pout")
    for kind in ("train", "eval"):
        with torch.no_grad():
            read = SyntheticAnalysers(kind).expression(t)[:, k].numpy()
        truth = np.array([p.expression.pout for pair in pairs for p in pair])
        res[f"{kind}_pout_mae_on_these_renders"] = float(np.abs(read - truth).mean())  # pout's range is [0, 1]
    # on each pair the best any analyser can do is answer the same for both: off by half the gap on average
    res["floor_mae_on_these_renders"] = float(gap.mean() / 2)
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
