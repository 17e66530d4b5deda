"""Can a synthetic base draw expressions? Where between the caption and the pixels is an expression lost?

Three checks, all read by the *evaluation* analysers:

* ``vae``: named-template renders (16 held-out people each) before and after the base's VAE round trip: does the
  latent space keep the expression? (mean reading per factor);
* ``words``: the base sampled from the same portraits' captions, whose expression word names the template: does the
  UNet draw it? (mean reading per factor, next to the renders'); and from the caption naming the expression alone
  ('a smiling person', as ``world pretrain --expression-captions`` trains with);
* ``captions``: 96 held-out captions (their expressions drawn as in training); per factor, the spread of the
  readings of the samples against the renders', and the Pearson r between the caption portrait's true factor and the
  sample's reading (a base that ignores the word draws varied expressions with r near 0);
* ``text``: how far the text encoder's output moves when only the expression word changes, against a change of hair
  colour or shading (sum over tokens of the L2 distance of the last hidden states).

    OMP_NUM_THREADS=1 python bench/base_expression.py --json bench/results/base_expression/shipped_v2.json
    OMP_NUM_THREADS=1 python bench/base_expression.py --base runs/world_parts/base --json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

NAMES = ("smile", "frown", "surprise", "wink_left", "pout", "neutral")
SHOWN = ("smile", "mouth_open", "eye_open_l", "eye_open_r", "brow_raise_l", "brow_tilt_l", "pout")
TEXT_PAIRS = {
    "frowning for smiling": "a shaded portrait of a frowning person with black short hair",
    "winking for smiling": "a shaded portrait of a winking person with black short hair",
    "red hair for black": "a shaded portrait of a smiling person with red short hair",
    "flat for shaded": "a flat portrait of a smiling person with black short hair",
}
TEXT_REF = "a shaded portrait of a smiling person with black short hair"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="a base folder (default: the shipped synthetic base)")
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)

    from emojidiff.synthetic.analysers import SyntheticAnalysers
    from emojidiff.synthetic.base_model import load_base_pipeline
    from emojidiff.synthetic.bench import mean_expression_readings, sample_base_images, vae_round_trip
    from emojidiff.synthetic.dataset import HELDOUT_IDS, sample_portraits
    from emojidiff.synthetic.factors import EXPRESSION_NAMES, TEMPLATES, Identity, Portrait, Style, expression_caption
    from emojidiff.synthetic.render import render_array
    from emojidiff.synthetic.train_analysers import _to_tensor

    pipe = load_base_pipeline(a.base)
    pipe.set_progress_bar_config(disable=True)
    ev = SyntheticAnalysers("eval")
    rng = np.random.default_rng(0)
    res: dict = {"base": a.base or "synthetic (shipped)", "guidance": a.guidance, "templates": {}}
    lo = HELDOUT_IDS[0] + 50_000
    for name in NAMES:
        people = [Portrait(lo + k, Identity.from_id(lo + k), TEMPLATES[name], Style.sample(rng)) for k in range(16)]
        renders = _to_tensor(render_array(people, 64))
        samples = _to_tensor(sample_base_images(pipe, [p.caption() for p in people], a.guidance, steps=20))
        alone = _to_tensor(sample_base_images(pipe, [expression_caption(TEMPLATES[name])] * 16, a.guidance, steps=20))
        res["templates"][name] = {
            "caption": people[0].caption(),
            "true": {n: round(float(getattr(TEMPLATES[name], n)), 3) for n in SHOWN},
            "render": mean_expression_readings(ev, renders, SHOWN),
            "vae_round_trip": mean_expression_readings(ev, vae_round_trip(pipe.vae, renders), SHOWN),
            "base_sample": mean_expression_readings(ev, samples, SHOWN),
            "expression_alone": mean_expression_readings(ev, alone, SHOWN),
        }

    portraits = sample_portraits(96, 777, HELDOUT_IDS)
    samples = _to_tensor(sample_base_images(pipe, [p.caption() for p in portraits], a.guidance, steps=20))
    renders = _to_tensor(render_array(portraits, 64))
    with torch.no_grad():
        g, r = ev.expression(samples).numpy(), ev.expression(renders).numpy()
    truth = np.stack([p.expression.to_vector() for p in portraits])
    res["captions"] = {
        n: {
            "std_render_reading": round(float(r[:, k].std()), 3),
            "std_sample_reading": round(float(g[:, k].std()), 3),
            "r_truth_sample": round(float(np.corrcoef(truth[:, k], g[:, k])[0, 1]), 3),
        }
        for k, n in enumerate(EXPRESSION_NAMES)
    }

    tok, text = pipe.tokenizer, pipe.text_encoder
    prompts = [TEXT_REF, *TEXT_PAIRS.values()]
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = text(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
    res["text_distance"] = {k: round(float((h[i + 1] - h[0]).norm(dim=-1).sum()), 2) for i, k in enumerate(TEXT_PAIRS)}

    for name, row in res["templates"].items():
        for what in ("true", "render", "vae_round_trip", "base_sample", "expression_alone"):
            print(f"{name:10s} {what:15s} " + " ".join(f"{n[:10]}={row[what][n]:+.2f}" for n in SHOWN))
    for n, row in res["captions"].items():
        print(f"{n:12s} spread render {row['std_render_reading']:.2f} sample {row['std_sample_reading']:.2f}  "
              f"r(caption truth, sample) {row['r_truth_sample']:+.2f}")  # fmt: skip
    print("text encoder distance from the reference caption:", res["text_distance"])
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
