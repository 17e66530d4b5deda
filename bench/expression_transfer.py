"""Does an adapter's expression branch carry each expression factor? Per factor, across held-out cases: the Pearson
correlation between the template's true factor and the output's factor as the *evaluation* analyser reads it, and
the mean absolute error (fraction of the range), with the branch off (exp_scale 0) and on (each --scale).

exp_err averages 13 factors; a branch that moves smile and mouth opening but not gaze or brow tilt hides in it. With
the branch off the output's expression is the base's choice, so its correlation with the template is about zero;
what the branch adds shows as correlation at scale > 0. ``--mode identity_only`` names the template's expression in
the prompt instead (the branch stays off at every scale: it measures whether the base draws expression *words*);
``--mode coarse`` feeds a clean render of the template's measured factors (``emojidiff bench``'s coarse control).
``--read-with ROOT`` (repeatable) also reads the same generated images with another evaluation set (its folder),
recorded under ``read_with``: how much of a change in exp_err is the reader's. The same cases, seeds and analysers as
``emojidiff eval``:

    OMP_NUM_THREADS=1 python bench/expression_transfer.py --adapter synthetic-naive --seed 0 \
        --json bench/results/expression_transfer/naive_seed0.json    # --adapter synthetic-ica: ica_seed0.json
    OMP_NUM_THREADS=1 python bench/expression_transfer.py --adapter synthetic-naive --mode identity_only --seed 0 \
        --json bench/results/expression_transfer/identity_only_seed0.json
    OMP_NUM_THREADS=1 python bench/expression_transfer.py --adapter synthetic-idi --mode coarse --seed 0 \
        --json bench/results/expression_transfer/coarse_idi_seed0.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from emojidiff.eval.metrics import read_face
from emojidiff.eval.synthetic import EVAL_BACKEND, MODES, AdapterMethod, GenSettings, PipelinePool
from emojidiff.eval.synthetic_cases import EXPRESSION_SPANS, heldout_cases
from emojidiff.faces import get_face_analyzer
from emojidiff.synthetic.analysers import SyntheticFaceAnalyzer


def transfer_table(
    adapter: str,
    n_identities: int,
    n_templates: int,
    seed: int,
    scales: list[float],
    mode: str = "full",
    read_with: list[str] | None = None,
) -> dict:
    cases = heldout_cases(n_identities, n_templates, seed)
    method = AdapterMethod(PipelinePool("cpu"), adapter, mode, GenSettings(), name=adapter, progress=True)
    all_scales = sorted({0.0, *scales})
    method.prepare(cases, all_scales, seed)
    readers = {"shipped": get_face_analyzer(EVAL_BACKEND)}
    readers.update({root: SyntheticFaceAnalyzer("eval", root) for root in read_with or []})
    names = list(EXPRESSION_SPANS)
    truth = np.array([[c.target_expression[n] for n in names] for c in cases])
    res: dict = {
        "adapter": adapter,
        "mode": mode,
        "seed": seed,
        "n_pairs": len(cases),
        "factors": names,
        "by_scale": {},
    }
    images = {s: [method(c, s, seed) for c in cases] for s in all_scales}
    for reader, analyser in readers.items():
        table = _read_table(analyser, images, truth, names)
        if reader == "shipped":
            res["by_scale"] = table
        else:
            res.setdefault("read_with", {})[reader] = table
    return res


def _read_table(analyser, images: dict, truth: np.ndarray, names: list[str]) -> dict:
    """Per scale: faces found, and per factor the correlation with the template's truth and the MAE (of the range)."""
    table = {}
    for s, imgs in images.items():
        readings = [read_face(analyser, im) for im in imgs]
        ok = np.array([r.expression is not None for r in readings])
        out = np.array([[r.expression[n] for n in names] if r.expression else [np.nan] * len(names) for r in readings])
        t, o = truth[ok], out[ok]
        span = np.array([EXPRESSION_SPANS[n] for n in names])
        r_f = [
            float(np.corrcoef(t[:, k], o[:, k])[0, 1]) if t[:, k].std() > 0 else float("nan") for k in range(len(names))
        ]
        mae = (np.abs(t - o) / span).mean(0)
        table[str(s)] = {
            "faces": int(ok.sum()),
            "r": dict(zip(names, np.round(r_f, 3).tolist(), strict=True)),
            "mae": dict(zip(names, np.round(mae, 4).tolist(), strict=True)),
            "mean_r": round(float(np.nanmean(r_f)), 3),
            "exp_err": round(float(mae.mean()), 4),
        }
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", default="synthetic-naive")
    ap.add_argument("--n-identities", type=int, default=16)
    ap.add_argument("--n-templates", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, action="append", help="exp_scale(s) besides 0 (default: 1)")
    ap.add_argument(
        "--mode",
        choices=MODES,
        default="full",
        help="as in emojidiff bench (identity_only: the prompt names the expression)",
    )
    ap.add_argument(
        "--read-with", action="append", default=[], metavar="ROOT", help="also read with this evaluation set's folder"
    )
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    res = transfer_table(a.adapter, a.n_identities, a.n_templates, a.seed, a.scale or [1.0], a.mode, a.read_with)
    res["seconds"] = round(time.time() - t0, 1)
    names = res["factors"]
    print(f"{'':12s}" + " ".join(f"{n[:6]:>6s}" for n in names) + "   mean")
    for s, row in res["by_scale"].items():
        print(f"r   @ {s:5s} " + " ".join(f"{row['r'][n]:6.2f}" for n in names) + f" {row['mean_r']:6.3f}")
        print(f"mae @ {s:5s} " + " ".join(f"{row['mae'][n]:6.3f}" for n in names) + f" {row['exp_err']:6.3f}")
    for root, table in res.get("read_with", {}).items():
        for s, row in table.items():
            cells = " ".join(f"{row['mae'][n]:6.3f}" for n in names)
            print(f"mae @ {s:5s} {cells} {row['exp_err']:6.3f}  {root}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
