"""Which base samples does each set of face analysers count as a face?

Samples the first ``--n`` held-out captions exactly as ``emojidiff world bench --what base`` does (25 DDIM steps,
seed 0), scores face presence with several analyser sets (the shipped train and eval sets, plus any ``--root``), and
saves the samples the shipped evaluation set rejects as one strip, to look at. Used to see whether the v3 analysers'
lower face rate on the v3 base candidate's samples means malformed faces or a harsh detector (both, in part):

    python bench/presence_judges.py --base runs/world_timed/base --root V2_ANALYSERS \\
        --json bench/results/presence_judges_v3.json --strip bench/results/presence_rejected_v3.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emojidiff.synthetic.analysers import PRESENCE_THRESHOLD, SyntheticAnalysers
from emojidiff.synthetic.base_model import load_base_pipeline
from emojidiff.synthetic.bench import sample_base_images
from emojidiff.synthetic.dataset import HELDOUT_IDS, sample_portraits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="base folder (default: the shipped one)")
    ap.add_argument("--root", action="append", default=[], help="another analyser root (holding train/ and eval/)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--strip", default=None, help="PNG of the samples the shipped eval set rejects (3x)")
    a = ap.parse_args()

    pipe = load_base_pipeline(a.base)
    prompts = [p.caption() for p in sample_portraits(a.n, 777, HELDOUT_IDS)]
    images = sample_base_images(pipe, prompts, a.guidance)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    judges = {"shipped train": SyntheticAnalysers("train"), "shipped eval": SyntheticAnalysers("eval")}
    for root in a.root:
        judges[f"{root} train"] = SyntheticAnalysers("train", Path(root, "train"))
        judges[f"{root} eval"] = SyntheticAnalysers("eval", Path(root, "eval"))
    with torch.no_grad():
        scores = {name: judge.presence(x).numpy() for name, judge in judges.items()}
    rejected = np.flatnonzero(scores["shipped eval"] < PRESENCE_THRESHOLD)
    out = {
        "n": a.n,
        "guidance": a.guidance,
        "face_rate": {name: float((s >= PRESENCE_THRESHOLD).mean()) for name, s in scores.items()},
        "rejected_by_shipped_eval": [
            {"index": int(i), "prompt": prompts[i], **{name: round(float(s[i]), 3) for name, s in scores.items()}}
            for i in rejected
        ],
    }
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    if a.strip and len(rejected):
        row = np.concatenate([(images[i] * 255 + 0.5).astype(np.uint8) for i in rejected], axis=1)
        Image.fromarray(row).resize((row.shape[1] * 3, row.shape[0] * 3), Image.NEAREST).save(a.strip)


if __name__ == "__main__":
    main()
