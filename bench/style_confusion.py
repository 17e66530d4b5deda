"""Which style words does a base confuse with which? Confusion matrices, and how far apart its text encoder holds
the words.

Samples the held-out captions exactly as ``emojidiff world bench --what base`` does (25 DDIM steps, seed 0), reads
each style head with a style classifier (default the shipped one, which since session 18 is the 2000-step judge
these runs used from ``runs/style_pilot``; ``--style`` another) and counts prompted value against drawn value. Then,
for pairs of prompts that differ in one style word, the largest distance between the text encoder's hidden states at
any token (what the UNet's cross-attention sees), next to the hidden states' typical norm. Used to find that the
bases' glasses misses are round/square swaps and that the text encoder barely tells those two words apart:

    OMP_NUM_THREADS=2 python bench/style_confusion.py --json bench/results/style_confusion/v2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emojidiff.synthetic.base_model import ANALYSERS_DIR, load_base_pipeline
from emojidiff.synthetic.bench import sample_base_images
from emojidiff.synthetic.dataset import HELDOUT_IDS, sample_portraits
from emojidiff.synthetic.style import STYLE_HEADS, load_style_net, style_labels

PROMPT = "a flat portrait of a person with brown curly hair, green eyes and round glasses, on a yellow background"
#: (what changes, the changed prompt): one style word at a time, and an appearance word for scale
WORD_PAIRS = (
    ("round -> square glasses", PROMPT.replace("round glasses", "square glasses")),
    ("round glasses -> a red hat", PROMPT.replace("round glasses", "a red hat")),
    ("yellow -> green background", PROMPT.replace("yellow background", "green background")),
    ("flat -> sketch", PROMPT.replace("a flat", "a sketch")),
    ("natural -> vivid palette", PROMPT.replace("a flat portrait", "a flat vivid portrait")),
    ("natural -> pastel palette", PROMPT.replace("a flat portrait", "a flat pastel portrait")),
    ("curly -> straight hair", PROMPT.replace("curly", "straight")),
)


@torch.no_grad()
def text_separation(tok, te) -> dict:

    def hidden(text: str) -> torch.Tensor:
        ids = tok([text], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return te(ids.input_ids)[0][0]

    ref = hidden(PROMPT)
    out = {"hidden_state_norm": round(float(ref.norm(dim=-1).mean()), 3)}
    for name, text in WORD_PAIRS:
        out[name] = round(float((hidden(text) - ref).norm(dim=-1).max()), 3)
    return out


@torch.no_grad()
def shape_pairs(pipe, net, n: int, guidance: float, seed: int = 0) -> dict:
    """Does the word or the starting noise decide the glasses' shape? ``n`` held-out captions, each drawn twice
    from the same starting latents (DDIM is deterministic given them): once saying 'round glasses', once 'square
    glasses'. Counts the (drawn under 'round', drawn under 'square') shape pairs: a base that follows the word draws
    (round, square); one that takes the shape from the noise draws the same shape twice."""
    from dataclasses import replace

    from emojidiff.synthetic.factors import GLASSES

    portraits = sample_portraits(n, 777, HELDOUT_IDS)
    gen = torch.Generator().manual_seed(seed)
    size = pipe.unet.config.sample_size
    latents = torch.randn((n, pipe.unet.config.in_channels, size, size), generator=gen)
    drawn = {}
    for shape in ("round", "square"):
        prompts = [replace(p, style=replace(p.style, glasses=shape)).caption() for p in portraits]
        images = sample_base_images(pipe, prompts, guidance, latents=latents)
        drawn[shape] = net(torch.from_numpy(images).permute(0, 3, 1, 2))["glasses"].argmax(1).numpy()
    m = np.zeros((len(GLASSES), len(GLASSES)), int)
    np.add.at(m, (drawn["round"], drawn["square"]), 1)
    r, q = GLASSES.index("round"), GLASSES.index("square")
    return {
        "n": n,
        "values": list(GLASSES),
        "drawn_under_round_rows_under_square_columns": m.tolist(),
        "both_words_followed": int(m[r, q]),
        "same_shape_twice": int(m[r, r] + m[q, q]),
        "swapped": int(m[q, r]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="base folder (default: the shipped one)")
    ap.add_argument("--style", default=None, help="style classifier safetensors (default: the shipped eval one)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--shape-pairs",
        type=int,
        default=0,
        help="also draw this many held-out captions twice from the same starting noise, once with round and once "
        "with square glasses, and count whether the drawn shape follows the word or stays with the noise",
    )
    ap.add_argument(
        "--text-encoder",
        default=None,
        help="a run's text_encoder folder: only measure how far apart it holds the words (no sampling; for runs "
        "with no base yet, such as a CLIP stage alone)",
    )
    a = ap.parse_args()

    if a.text_encoder:
        from transformers import CLIPTextModel

        from emojidiff.synthetic.tokenizer import world_tokenizer

        te = CLIPTextModel.from_pretrained(a.text_encoder).eval()
        _report(
            {"text_encoder": a.text_encoder, "text_encoder_max_token_distance": text_separation(world_tokenizer(), te)},
            a.json,
        )
        return
    pipe = load_base_pipeline(a.base)
    portraits = sample_portraits(a.n, 777, HELDOUT_IDS)
    images = sample_base_images(pipe, [p.caption() for p in portraits], a.guidance)
    net = load_style_net(a.style or ANALYSERS_DIR / "eval" / "style.safetensors")
    with torch.no_grad():
        pred = {k: v.argmax(1).numpy() for k, v in net(torch.from_numpy(images).permute(0, 3, 1, 2)).items()}
    result: dict = {"base": a.base or "shipped", "style": a.style or "shipped", "n": a.n, "guidance": a.guidance}
    colour = np.array([p.style.palette != "monochrome" for p in portraits])
    for head, values in STYLE_HEADS.items():
        truth = np.array([style_labels(p.style)[head] for p in portraits])
        keep = colour if head == "background" else np.ones(len(portraits), bool)  # monochrome hides the colour
        m = np.zeros((len(values), len(values)), int)
        np.add.at(m, (truth[keep], pred[head][keep]), 1)
        result[head] = {
            "values": list(values),
            "accuracy": round(float(np.trace(m) / m.sum()), 4),
            "confusion_prompted_rows_drawn_columns": m.tolist(),
        }
    result["text_encoder_max_token_distance"] = text_separation(pipe.tokenizer, pipe.text_encoder)
    if a.shape_pairs:
        result["glasses_shape_pairs"] = shape_pairs(pipe, net, a.shape_pairs, a.guidance)
    _report(result, a.json)


def _report(result: dict, path: str | None) -> None:
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


if __name__ == "__main__":
    main()
