"""Training data for the E-Adapter in the synthetic world: round-0 triplets and IDI source manifests.

Round 0 (DESIGN.md §2, the paper's naive setting): the expression template *is* the target image (the branch sees its
masked face crop), and the identity reference is another render of the same person with another expression and
style. Nothing stops the expression branch from carrying the template's identity, so the round-0 model leaks it;
IDI rounds then replace these pairs with cross-identity triplets.

Prompts name only the style ("a shaded pastel portrait of a person with glasses, on a green background"): identity
and expression must come from the two branches, not from caption words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.manifest import Triplet, write_jsonl, write_manifest
from .dataset import TRAIN_IDS, read_manifest, sample_identity_sets, write_renders
from .factors import Style, style_words


def style_prompt(style: Style) -> str:
    """A caption naming the style factors alone (every word is in the base model's tokenizer)."""
    palette, extras = style_words(style)
    who = "a person" + (" with " + " and ".join(extras) if extras else "")
    return f"a {style.shading} {palette}portrait of {who}, on a {style.background} background"


@dataclass
class PairsSummary:
    people: int
    images: int
    triplets: int
    val: int
    templates: int
    identities: int


def write_round0(
    out: str | Path,
    n_people: int,
    per_person: int = 3,
    seed: int = 0,
    n_val: int = 8,
    identity_ids: tuple[int, int] = TRAIN_IDS,
    size: int = 64,
    chunk: int = 512,
) -> PairsSummary:
    """Render ``n_people`` x ``per_person`` portraits and write, into ``out``:

    - ``images/*.png`` and ``renders.jsonl`` (every render's exact factors, as ``world render`` writes them);
    - ``triplets.jsonl``: one round-0 triplet per render (template = target = the render, identity = the next render of
      the same person), prompt = its style caption; ``val.jsonl``: the first ``n_val`` triplets of held-back people;
    - ``templates.jsonl`` / ``identities.jsonl``: IDI source manifests (``image``, ``person``, ``prompt``, ``style``):
      templates are one render per person, identities another one, so IDI pairs templates with other people.
    """
    if per_person < 2:
        raise ValueError("per_person must be at least 2: a target and another image of the same person")
    out = Path(out)
    portraits = sample_identity_sets(n_people, per_person, [seed, 7], identity_ids)
    ids = [portraits[j * per_person].identity_id for j in range(n_people)]
    manifest = write_renders(portraits, out, size, chunk, subfolder="images", manifest="renders.jsonl", digits=7)
    files = [rec["file"] for rec in read_manifest(manifest)]

    triplets, val, templates, identities = [], [], [], []
    held_back = set(range(min(n_val, n_people)))  # the first people are validation only
    for j in range(n_people):
        group = list(range(j * per_person, (j + 1) * per_person))
        for g, i in enumerate(group):
            ref = group[(g + 1) % per_person]
            t = Triplet(str(out / files[i]), [str(out / files[ref])], str(out / files[i]),
                        style_prompt(portraits[i].style), {"person": int(ids[j])})  # fmt: skip
            (val if j in held_back else triplets).append(t)
        if j in held_back:
            continue
        for i, dest in ((group[0], templates), (group[1], identities)):
            s = portraits[i].style
            dest.append(_dumps({"image": files[i], "person": str(ids[j]), "prompt": style_prompt(s),
                                "style": style_prompt(s)}))  # fmt: skip
    write_manifest(out / "triplets.jsonl", triplets)
    write_manifest(out / "val.jsonl", val[:n_val])
    write_jsonl(out / "templates.jsonl", templates)
    write_jsonl(out / "identities.jsonl", identities)
    return PairsSummary(n_people, len(portraits), len(triplets), min(len(val), n_val), len(templates), len(identities))


def _dumps(d: dict) -> str:
    return json.dumps(d, sort_keys=True)
