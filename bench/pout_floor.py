"""How much of pout can be read at all from a 64-px render saved as 8-bit pixels, open mouths included?

``bench/pout_identifiability.py`` showed that with the mouth closed any pout from 2/3 to 1 can be traded against the
person's mouth width and lip fullness. With the mouth open the trade is wider. In ``render._geometry`` pout also
lowers the opening (height 0.2 mouth_open (1 - 0.3 pout)), and the lip blob it fades in is mostly painted over by
the open mouth; mouth opening in turn lengthens and narrows the face and lowers the eyes, which the person's own face
length, face width and eye height do too. So a portrait pouting p with the mouth open m renders almost exactly like
another person (those five identity factors moved to compensate) pouting p' with the mouth open m (1 - 0.3 p) /
(1 - 0.3 p'): what is left is the mouth 0.02 (m' - m) lower (a few hundredths of a pixel) and, below pout 2/3, the
blob's opacity where it shows.

For each of the held-out portraits ``evaluate_face`` scores (the same seed and draws) this sweeps p' over a grid,
builds that matched portrait for each value (where every moved factor stays in its range [0, 1]; elsewhere no
person of this world renders so), renders them at 64 px rounded to 8 bits, and finds the run of grid values around
the true pout whose image is the true one's, exactly or within 1, 2 or 4 levels in every pixel. As in
``bench/gaze_identifiability.py``, no analyser can tell the values of an exact run apart: the best single answer
errs by a quarter of its width on average (a floor; pout's range is [0, 1]); the tolerant runs are not bounds but
say how faint what separates them is. Printed by group with the shipped analysers' pout error on the same 8-bit
renders.

    OMP_NUM_THREADS=1 python bench/pout_floor.py --json bench/results/pout_floor.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from gaze_identifiability import floor_row, same_image_run  # bench/ is on the path when this runs as a script
from pout_identifiability import matched_identity


def matched_portrait(p, pout_to: float):
    """The portrait of the person (face width and length, eye height, mouth width, lip fullness moved) who, pouting
    ``pout_to`` with the mouth opened to keep the opening's height, draws the same face, mouth and eyes as ``p``
    (render._geometry), up to the mouth's 0.02 (m' - m) shift and the lip blob's opacity; None if no such person
    exists (a factor leaves [0, 1])."""
    e, i = p.expression, p.identity
    m = e.mouth_open * (1 - 0.3 * e.pout) / (1 - 0.3 * pout_to)
    smile = max(e.smile, 0.0)
    half_width = (0.36 + 0.12 * i.face_width) * (1 + 0.04 * smile - 0.03 * e.mouth_open) / (1 + 0.04 * smile - 0.03 * m)
    mouth = matched_identity(i, e.pout, pout_to)  # the closed-mouth trade: mouth width and lip fullness
    moved = {
        "face_width": (half_width - 0.36) / 0.12,
        "face_length": i.face_length + 0.7 * (e.mouth_open - m),
        "eye_height": i.eye_height + 0.25 * (m - e.mouth_open),
        "mouth_width": mouth.mouth_width,
        "lip_fullness": mouth.lip_fullness,
    }
    if not (0 <= m <= 1 and all(0 <= v <= 1 for v in moved.values())):
        return None
    expression = dataclasses.replace(e, pout=float(pout_to), mouth_open=float(m))
    return dataclasses.replace(p, identity=dataclasses.replace(i, **moved), expression=expression)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="held-out portraits (evaluate_face's first N)")
    ap.add_argument("--grid", type=int, default=101, help="pout values swept over [0, 1]")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from tqdm import tqdm

    from emojidiff.synthetic.analysers import SyntheticAnalysers
    from emojidiff.synthetic.factors import EXPRESSION_NAMES
    from emojidiff.synthetic.nets import INPUT_SIZE
    from emojidiff.synthetic.render import render_array
    from emojidiff.synthetic.train_analysers import HELDOUT, _to_tensor, sample_with_source

    rng = np.random.default_rng(54321)  # evaluate_face's held-out draw
    ps, uniform = zip(*(sample_with_source(rng, HELDOUT) for _ in range(a.n)), strict=True)
    tolerances = (0, 1, 2, 4)
    floor = np.zeros((len(tolerances), a.n))
    for n, p in enumerate(tqdm(ps, desc="portraits", mininterval=5)):
        values = np.sort(np.append(np.linspace(0.0, 1.0, a.grid), p.expression.pout))
        k = int(np.searchsorted(values, p.expression.pout))
        sweep = [p if j == k else matched_portrait(p, float(v)) for j, v in enumerate(values)]
        ok = np.array([q is not None for q in sweep])
        images = np.zeros((len(values), INPUT_SIZE, INPUT_SIZE, 3), np.int16) - 1000  # no person: never the same
        images[ok] = (render_array([q for q in sweep if q is not None], INPUT_SIZE) * 255.0 + 0.5).astype(np.uint8)
        for t, tol in enumerate(tolerances):
            lo, hi = same_image_run(images, k, tol)
            floor[t, n] = (values[hi] - values[lo]) / 4.0
    x = _to_tensor((render_array(list(ps), INPUT_SIZE) * 255.0 + 0.5).astype(np.uint8).astype(np.float32) / 255.0)
    truth = np.array([p.expression.pout for p in ps])
    j = EXPRESSION_NAMES.index("pout")
    errors = {}
    for kind in ("train", "eval"):
        with torch.no_grad():
            errors[kind] = np.abs(SyntheticAnalysers(kind).expression(x)[:, j].numpy() - truth)
    mouth = np.array([p.expression.mouth_open for p in ps])
    uni = np.array(uniform)
    groups = {
        "all": np.ones(a.n, bool),
        "template expressions": ~uni,
        "uniform expressions": uni,
        "mouth closed": mouth == 0,
        "mouth open": mouth > 0,  # every uniform draw (its mouth opening is uniform in [0, 1])
    }
    res: dict = {"n": a.n, "grid": a.grid}
    for name, mask in groups.items():
        res[name] = {"portraits": int(mask.sum()), **floor_row(floor, errors, mask.astype(float), tolerances)}
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
