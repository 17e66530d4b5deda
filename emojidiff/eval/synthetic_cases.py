"""Held-out evaluation cases of the synthetic world: identity references x expression templates x prompted styles.

Every person comes from ``HELDOUT_IDS`` (never used to train the analysers, the base model or the adapters), drawn
with an RNG keyed by the seed, so another seed gives other people, templates and styles. A case holds:

* ``identity``: 1-2 renders of the target person (random expression and style: what a user's photos would be);
* ``template``: a render of *another* held-out person (never one of the identity people) wearing a named expression
  of :data:`~emojidiff.synthetic.factors.TEMPLATES` with a little jitter, in a random style;
* ``template_identity``: a neutral render of the template's person (the reference leakage is measured against);
* ``prompt``: a style-only caption of the world's vocabulary (as in training: identity and expression must come
  from the branches), for a style drawn independently of the template's style;
* ground truth: ``target_expression`` = the template's exact expression factors, ``target_ratios`` = the exact
  landmark ratios of the ideal output (the identity person wearing that expression);
* ``meta``: ids, the template's name, true expression and style, the prompt's style, and ``expression_prompt``
  (the prompt with the expression's caption word, for text-only expression baselines).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from PIL import Image

from ..errors import InputError
from ..synthetic.dataset import HELDOUT_IDS
from ..synthetic.factors import (
    EXPRESSION_RANGES,
    TEMPLATE_WORDS,
    TEMPLATES,
    Expression,
    Identity,
    Portrait,
    Style,
    nearest_template,
    sample_expression,
)
from ..synthetic.pairs import style_prompt
from ..synthetic.render import face_geometry, render
from .runner import Case

#: span (high - low) of every expression factor: expression errors are divided by it (a fraction of the range)
EXPRESSION_SPANS: dict[str, float] = {name: hi - lo for name, lo, hi in EXPRESSION_RANGES}
#: the canonical face and style that coarse control re-renders measured expression factors on
CANONICAL_IDENTITY = Identity()
CANONICAL_STYLE = Style()


def expression_prompt(style: Style, word: str) -> str:
    """The style prompt with an expression's caption word ('a flat portrait of a smiling person, ...')."""
    return style_prompt(style).replace("portrait of a person", f"portrait of a {word} person", 1)


def jittered(expr: Expression, rng: np.random.Generator, jitter: float) -> Expression:
    """``expr`` plus Gaussian noise of ``jitter`` x half of each factor's range, clipped to the ranges."""
    lo = np.array([r[1] for r in EXPRESSION_RANGES])
    hi = np.array([r[2] for r in EXPRESSION_RANGES])
    v = expr.to_vector() + rng.normal(0.0, jitter, len(lo)) * (hi - lo) / 2
    return Expression.from_vector(np.clip(v, lo, hi))


def heldout_cases(
    n_identities: int,
    n_templates: int,
    seed: int = 0,
    *,
    n_pairs: int | None = None,
    jitter: float = 0.05,
    size: int = 64,
) -> list[Case]:
    """``n_identities`` x ``n_templates`` cases (or a seeded subset of ``n_pairs`` of them), the same for a seed.

    Templates cycle through a seeded order of the named expressions (so up to 16 templates are all different
    expressions); each template shows its own person. Identity people and template people are disjoint.
    """
    if n_identities < 1 or n_templates < 1:
        raise InputError(f"need at least one identity and one template, got {n_identities} and {n_templates}")
    rng = np.random.default_rng([int(seed), 0xE7A1])
    n_people = n_identities + n_templates
    lo, hi = HELDOUT_IDS
    if n_people > hi - lo:
        raise InputError(f"only {hi - lo} held-out people exist, {n_people} asked for")
    ids = [int(i) + lo for i in rng.choice(hi - lo, size=n_people, replace=False)]
    id_people, tpl_people = ids[:n_identities], ids[n_identities:]

    refs: list[list[Image.Image]] = []
    for iid in id_people:
        ident = Identity.from_id(iid)
        k = int(rng.integers(1, 3))
        refs.append(render([Portrait(iid, ident, sample_expression(rng), Style.sample(rng)) for _ in range(k)], size))

    names = list(TEMPLATES)
    order = [names[i] for i in rng.permutation(len(names))]
    templates = []
    for j, tid in enumerate(tpl_people):
        name = order[j % len(order)]
        expr = jittered(TEMPLATES[name], rng, jitter)
        tstyle = Style.sample(rng)
        ident = Identity.from_id(tid)
        img = render(Portrait(tid, ident, expr, tstyle), size)
        ref = render(Portrait(tid, ident, Expression(), Style.sample(rng)), size)
        templates.append((tid, name, expr, tstyle, img, ref))

    # every pair's prompt style is drawn before any subset is taken, so a subset is a subset of the full cases
    pairs = [(i, j, Style.sample(rng)) for i in range(n_identities) for j in range(n_templates)]
    if n_pairs is not None and n_pairs < len(pairs):
        keep = sorted(rng.choice(len(pairs), size=max(1, n_pairs), replace=False).tolist())
        pairs = [pairs[k] for k in keep]

    cases = []
    for i, j, pstyle in pairs:
        iid = id_people[i]
        tid, name, expr, tstyle, img, ref = templates[j]
        word = TEMPLATE_WORDS[nearest_template(expr)]
        ideal = Portrait(iid, Identity.from_id(iid), expr, pstyle)
        cases.append(
            Case(
                identity=refs[i],
                identity_key=f"person_{iid}",
                template=img,
                template_key=f"person_{tid}",
                prompt=style_prompt(pstyle),
                style=f"{pstyle.shading}/{pstyle.palette}/{pstyle.background}",
                target_expression=expr.to_dict(),
                target_ratios={k: float(v) for k, v in face_geometry(ideal, size)["ratios"].items()},
                template_identity=[ref],
                meta={
                    "identity_id": iid,
                    "template_id": tid,
                    "template_name": name,
                    "template_expression": expr.to_dict(),
                    "template_style": asdict(tstyle),
                    "prompt_style": asdict(pstyle),
                    "expression_word": word,
                    "expression_prompt": expression_prompt(pstyle, word),
                    "case_seed": case_seed(seed, iid, tid),
                },
            )
        )
    return cases


def case_seed(seed: int, identity_id: int, template_id: int) -> int:
    """The noise seed of one case: the same for every method and scale (paired comparisons), another per case."""
    return int(np.random.SeedSequence([int(seed), int(identity_id), int(template_id)]).generate_state(1)[0])


def ideal_output(case: Case, size: int = 64) -> Image.Image:
    """The picture a perfect method would make for ``case``: its person, the template's expression, the prompt's
    style (a real render, shown beside the outputs in the benchmark's grid)."""
    iid = int(case.meta["identity_id"])
    p = Portrait(iid, Identity.from_id(iid), Expression.from_dict(case.meta["template_expression"]),
                 Style.from_dict(case.meta["prompt_style"]))  # fmt: skip
    return render(p, size)


def coarse_template(expression: dict[str, float], size: int = 64) -> Image.Image:
    """Measured expression factors re-rendered on the canonical neutral face and style: the 'coarse control'
    template (what landmark/ControlNet-style conditioning keeps of a face: its expression geometry alone)."""
    expr = Expression.from_vector([float(expression.get(n, getattr(Expression(), n))) for n in EXPRESSION_SPANS])
    return render(Portrait(-1, CANONICAL_IDENTITY, expr, CANONICAL_STYLE), size)
