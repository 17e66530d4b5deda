"""How much of gaze y can be read at all from a 64-px render saved as 8-bit pixels?

Gaze y moves the iris up or down by at most 0.35 of the eye's half-height (about 0.8 px at 64 px), inside lids that
cover most of it when the eye is half closed, and the sketch style darkens every edge pixel. For each of the
held-out portraits that ``evaluate_face`` scores (the same seed and draws), this renders the portrait again with
gaze y swept over a fine grid (every other factor, the person and the style unchanged), rounds every render to 8
bits as a saved image is, and finds the run of grid values around the true gaze whose 8-bit image is exactly the
true one's. No analyser can tell those gazes apart from that image: if the truth is anywhere in a run of width w,
the best single answer errs by w/4 on average (the run's median against a uniform truth). That average, over the
portraits that score gaze (an eye at least 0.3 open), as a fraction of gaze y's range, is the floor printed here,
with the analyser's own gaze-y error on the same portraits, by shading.

The floor counts only exactly equal images: two images one 8-bit level apart in a single pixel count as readable,
so it is a lower bound on the error of any analyser that reads 8-bit images (the held-out scores read float
renders; their floor is lower still). The same measure with a tolerance (renders within 1, 2 or 4 levels of the
true one in every pixel count as the same) is not a bound but says how faint the rest of the signal is.

    OMP_NUM_THREADS=1 python bench/gaze_identifiability.py --json bench/results/gaze_identifiability.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch


def same_image_run(images: np.ndarray, k: int, tolerance: int = 0) -> tuple[int, int]:
    """Indices [lo, hi] of the run of consecutive grid renders around ``k`` that differ from render ``k`` by at most
    ``tolerance`` 8-bit levels in every pixel (0: identical)."""
    off = np.abs(images.astype(np.int16) - images[k].astype(np.int16)).reshape(len(images), -1).max(1) <= tolerance
    lo = hi = k
    while lo > 0 and off[lo - 1]:
        lo -= 1
    while hi < len(images) - 1 and off[hi + 1]:
        hi += 1
    return lo, hi


def floor_row(floor: np.ndarray, errors: dict[str, np.ndarray], w: np.ndarray, tolerances: tuple[int, ...]) -> dict:
    """Means over portraits weighted ``w`` of the floor (``floor[0]``: exact runs), the share of portraits with an
    exact run, the tolerant runs' widths (``floor[t]`` for ``tolerances[t]``) and each analyser's error."""
    row = {"floor": float((floor[0] * w).sum() / w.sum())}
    row["share_with_an_unreadable_run"] = float(((floor[0] > 0) * w).sum() / w.sum())
    for t, tol in enumerate(tolerances[1:], 1):
        row[f"floor_within_{tol}_levels"] = float((floor[t] * w).sum() / w.sum())
    for kind, err in errors.items():
        row[f"{kind}_error_8bit"] = float((err * w).sum() / w.sum())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="held-out portraits (evaluate_face's first N)")
    ap.add_argument("--grid", type=int, default=201, help="gaze-y values swept over [-1, 1]")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from tqdm import tqdm

    from emojidiff.synthetic.analysers import SyntheticAnalysers
    from emojidiff.synthetic.factors import EXPRESSION_NAMES
    from emojidiff.synthetic.nets import INPUT_SIZE
    from emojidiff.synthetic.render import render_array
    from emojidiff.synthetic.train_analysers import HELDOUT, _sample, _to_tensor, gaze_visibility

    rng = np.random.default_rng(54321)  # evaluate_face's held-out draw
    ps = [_sample(rng, HELDOUT) for _ in range(a.n)]
    grid = np.linspace(-1.0, 1.0, a.grid)
    tolerances = (0, 1, 2, 4)
    floor = np.zeros((len(tolerances), a.n))
    for i, p in enumerate(tqdm(ps, desc="portraits", mininterval=5)):
        # the true gaze goes into the sweep at its place, so "the same image as the truth's" is exact
        values = np.sort(np.append(grid, p.expression.gaze_y))
        k = int(np.searchsorted(values, p.expression.gaze_y))
        sweep = [dataclasses.replace(p, expression=dataclasses.replace(p.expression, gaze_y=float(v))) for v in values]
        images = (render_array(sweep, INPUT_SIZE) * 255.0 + 0.5).astype(np.uint8)
        for t, tol in enumerate(tolerances):
            lo, hi = same_image_run(images, k, tol)
            floor[t, i] = (values[hi] - values[lo]) / 4.0 / 2.0  # w/4, as a fraction of the range (2)
    truth = torch.tensor(np.stack([p.expression.to_vector() for p in ps]), dtype=torch.float32)
    w = gaze_visibility(truth).numpy()
    x = _to_tensor((render_array(ps, INPUT_SIZE) * 255.0 + 0.5).astype(np.uint8).astype(np.float32) / 255.0)
    j = EXPRESSION_NAMES.index("gaze_y")
    res: dict = {"n": a.n, "grid": a.grid, "scored": float(w.sum())}
    errors = {}
    for kind in ("train", "eval"):
        with torch.no_grad():
            read = SyntheticAnalysers(kind).expression(x)[:, j].numpy()
        errors[kind] = np.abs(read - truth[:, j].numpy()) / 2.0
    shading = np.array([p.style.shading for p in ps])
    for name, mask in [("all", np.ones(a.n, bool))] + [(s, shading == s) for s in ("flat", "shaded", "sketch")]:
        res[name] = {"portraits": int(mask.sum()), **floor_row(floor, errors, w * mask, tolerances)}
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
