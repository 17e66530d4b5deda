"""Expression-sensitive layers: inject the expression branch one attention block at a time and measure what moves.

For each attention block ``b`` of the adapter (``attention_blocks`` in ``emojidiff.json``) and each probe pair
(template T, identity B, prompt, seed), the probe generates

- ``X0``: identity B, no expression (the expression branch off everywhere), and
- ``Xb``: identity B, template T, expression branch on block ``b`` alone (per-block scale map with only ``b``),

with the same seed, and scores with a face analyser:

- ``exp_gain``  = err(X0, T) − err(Xb, T): how far the expression moved *toward the template* (err: mean absolute
  difference of ``measure_expression``; positive is good);
- ``exp_change`` = err(Xb, X0): how much the expression moved at all;
- ``id_change``  = 1 − cos(id(Xb), id(X0)): identity drift caused by the block;
- ``style_change`` = mean |Xb − X0| over pixels outside the face mask of X0, in [0, 1]: style/background drift.

**Rule.** Each block gets ``score = exp_gain − w_id·id_change − w_style·style_change`` (means over pairs). The chosen
map is every block with ``exp_gain > 0`` and ``score > 0`` whose score is at least ``keep_fraction`` (default 0.5)
of the best block's score. If no block qualifies, nothing is chosen and ``--write`` refuses to write.

Probe an adapter whose expression branch was trained on **all** blocks (``expression_layers: all``): a block whose
expression weights are zero (outside the map it was trained with) cannot move anything and is flagged ``untrained``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError, NoFaceError
from ..faces import select_face
from ..faces.base import FaceAnalyzer
from ..idi.filters import cosine, expression_error
from ..idi.sources import SourceImage

DEFAULT_PROMPT = "a portrait photo of a person"


@dataclass
class ProbePair:
    template: str
    identity: str
    prompt: str = DEFAULT_PROMPT
    seed: int = 0


@dataclass
class BlockScore:
    block: str
    exp_gain: float
    exp_change: float
    id_change: float
    style_change: float
    score: float = float("nan")
    n: int = 0  # pairs scored (a pair is skipped when the analyser finds no face)
    untrained: bool = False
    chosen: bool = False


@dataclass
class ProbeResult:
    blocks: list[BlockScore]
    all_blocks: BlockScore  # reference: the branch on every block at once (not a candidate)
    chosen: list[str]
    previous: list[str]  # the adapter's map before the probe
    rule: dict = field(default_factory=dict)
    pairs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        def clean(d):
            return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

        return {
            "blocks": [clean(asdict(b)) for b in self.blocks],
            "all_blocks": clean(asdict(self.all_blocks)),
            "chosen": self.chosen,
            "previous": self.previous,
            "rule": self.rule,
            "pairs": self.pairs,
        }


def probe_pairs(
    templates: list[SourceImage], identities: list[SourceImage], n: int, seed: int = 0, prompt: str | None = None
) -> list[ProbePair]:
    """Up to ``n`` pairs: template ``i`` with the next identity of another person (round-robin), seeds ``seed + i``."""
    out: list[ProbePair] = []
    j = 0
    for i, t in enumerate(templates):
        if len(out) >= n:
            break
        for k in range(len(identities)):
            cand = identities[(j + k) % len(identities)]
            if cand.person != t.person:
                j = (j + k + 1) % len(identities)
                out.append(ProbePair(t.image, cand.image, prompt or t.prompt or DEFAULT_PROMPT, seed + i))
                break
    if not out:
        raise InputError("no probe pair: the identities manifest holds no person other than the templates' persons")
    return out


def choose_layers(rows: list[BlockScore], keep_fraction: float = 0.5) -> list[str]:
    """The documented rule (see the module docstring); fills ``chosen`` on the rows."""
    ok = [r for r in rows if math.isfinite(r.score) and r.exp_gain > 0 and r.score > 0]
    best = max((r.score for r in ok), default=None)
    chosen = {r.block for r in ok if r.score >= keep_fraction * best} if best is not None else set()
    for r in rows:
        r.chosen = r.block in chosen
    return [r.block for r in rows if r.chosen]


def _zero_blocks(pipe) -> set[str]:
    from ..adapter.layers import block_key, cross_attention_processors

    procs = pipe.pipe.unet.attn_processors
    nonzero: dict[str, bool] = {}
    for name in cross_attention_processors(pipe.pipe.unet):
        p, b = procs[name], block_key(name)
        w = [p.to_k_ip[1].weight, p.to_v_ip[1].weight] if hasattr(p, "to_k_ip") else []
        nonzero[b] = nonzero.get(b, False) or any(bool(x.detach().abs().sum() > 0) for x in w)
    return {b for b, nz in nonzero.items() if not nz}


class _Measured:
    def __init__(self, fa: FaceAnalyzer, img: Image.Image):
        face = select_face(fa.detect(img), "a probe image")
        self.arr = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
        self.id = np.asarray(fa.identity_embedding(img, face), dtype=np.float64)
        self.exp = fa.measure_expression(img, face)
        self.mask = np.asarray(fa.face_mask(img, face), dtype=np.float64)


def probe_layers(
    pipe,
    pairs: list[ProbePair],
    *,
    analyzer: FaceAnalyzer | None = None,
    id_scale: float = 1.0,
    exp_scale: float = 1.0,
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    resolution: int | None = None,
    w_id: float = 1.0,
    w_style: float = 1.0,
    keep_fraction: float = 0.5,
    blocks: list[str] | None = None,
) -> ProbeResult:
    """Measure every block (or ``blocks``) of an :class:`~emojidiff.pipeline.EmojiDiffPipeline`; see the module doc.

    The pipeline's layer map is restored afterwards.
    """
    from ..io import load_image

    fa = analyzer or pipe.face_analyzer
    cfg = pipe.config
    blocks = list(blocks or cfg.attention_blocks)
    previous = list(cfg.expression_layers)
    zero = _zero_blocks(pipe)

    def gen(pair: ProbePair, layers: list[str] | None) -> Image.Image:
        cfg.expression_layers = layers or []
        return pipe(
            pair.prompt, identity=pair.identity, expression=pair.template if layers else None, id_scale=id_scale,
            exp_scale=exp_scale, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            seed=pair.seed, height=resolution, width=resolution,
        ).images[0]  # fmt: skip

    sums: dict[str, list[list[float]]] = {b: [] for b in [*blocks, "all"]}
    try:
        pipe.set_progress_bar_config(disable=True)
        for pair in pairs:
            t_exp = _Measured(fa, load_image(pair.template, "expression template")).exp
            try:
                base = _Measured(fa, gen(pair, None))
            except NoFaceError:
                continue
            err0 = expression_error(base.exp, t_exp)
            outside = base.mask < 0.5
            for b in [*blocks, "all"]:
                try:
                    m = _Measured(fa, gen(pair, list(cfg.attention_blocks) if b == "all" else [b]))
                except NoFaceError:
                    continue
                style = float(np.abs(m.arr - base.arr)[outside].mean()) if outside.any() else 0.0
                sums[b].append([
                    err0 - expression_error(m.exp, t_exp), expression_error(m.exp, base.exp),
                    1.0 - cosine(m.id, base.id), style,
                ])  # fmt: skip
    finally:
        cfg.expression_layers = previous

    def row(b: str) -> BlockScore:
        v = np.asarray(sums[b], dtype=np.float64).reshape(-1, 4)
        mean = v.mean(axis=0) if len(v) else np.full(4, np.nan)
        r = BlockScore(b, *map(float, mean), n=len(v), untrained=b in zero)
        r.score = r.exp_gain - w_id * r.id_change - w_style * r.style_change
        return r

    rows = [row(b) for b in blocks]
    chosen = choose_layers(rows, keep_fraction)
    rule = {"score": "exp_gain - w_id*id_change - w_style*style_change", "w_id": w_id, "w_style": w_style,
            "keep_fraction": keep_fraction, "exp_scale": exp_scale, "id_scale": id_scale,
            "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}  # fmt: skip
    return ProbeResult(rows, row("all"), chosen, previous, rule, [asdict(p) for p in pairs])


def format_table(result: ProbeResult) -> str:
    head = f"{'block':<16}{'exp_gain':>10}{'exp_chg':>10}{'id_chg':>10}{'style_chg':>10}{'score':>10}  chosen"
    lines = [head, "-" * len(head)]
    for r in [*result.blocks, result.all_blocks]:
        mark = "*" if r.chosen else ("(untrained)" if r.untrained else "")
        name = "(all blocks)" if r.block == "all" else r.block
        lines.append(f"{name:<16}{r.exp_gain:>10.4f}{r.exp_change:>10.4f}{r.id_change:>10.4f}{r.style_change:>10.4f}"
                     f"{r.score:>10.4f}  {mark}")  # fmt: skip
    lines.append(f"chosen map: {','.join(result.chosen) or '(none)'}   (was: {','.join(result.previous) or 'none'})")
    return "\n".join(lines)


def plot_probe(result: ProbeResult, path: str | Path) -> None:
    """Grouped bars per block: expression gain, identity change, style change, score; chosen blocks starred."""
    series = [("exp_gain", (60, 160, 80)), ("id_change", (200, 80, 70)), ("style_change", (230, 150, 40)),
              ("score", (50, 90, 200))]  # fmt: skip
    rows = result.blocks
    group, bar = 4 * 14 + 16, 14
    w, h = max(420, 60 + group * len(rows)), 300
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    vals = [getattr(r, k) for r in rows for k, _ in series if math.isfinite(getattr(r, k))]
    top_v = max([abs(v) for v in vals] + [1e-6])
    top, bottom = 40, h - 50
    zero_y = (top + bottom) / 2
    d.text((8, 6), "expression-layer probe: per-block effect of the expression branch alone", fill="black", font=font)
    for i, (k, c) in enumerate(series):
        d.rectangle([8 + i * 100, 22, 18 + i * 100, 32], fill=c)
        d.text((22 + i * 100, 21), k, fill="black", font=font)
    d.line([40, zero_y, w - 10, zero_y], fill=(120, 120, 120))
    for gi, r in enumerate(rows):
        x = 50 + gi * group
        for si, (k, c) in enumerate(series):
            v = getattr(r, k)
            if not math.isfinite(v):
                continue
            y = zero_y - (bottom - top) / 2 * v / top_v
            d.rectangle([x + si * bar, min(y, zero_y), x + si * bar + bar - 3, max(y, zero_y)], fill=c)
        d.text((x, bottom + 8), r.block + (" *" if r.chosen else ""), fill="black", font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)


def write_layer_map(adapter_dir: str | Path, layers: list[str]) -> Path:
    """Set ``expression_layers`` in the adapter's ``emojidiff.json`` (other keys untouched; atomic)."""
    from ..adapter.config import CONFIG_NAME, EmojiDiffConfig
    from ..adapter.layers import parse_layer_spec

    if not layers:
        raise InputError("the probe chose no block (none moved the expression toward the template more than it "
                         "changed identity and style): not writing an empty layer map")  # fmt: skip
    cfg = EmojiDiffConfig.load(adapter_dir)
    layers = parse_layer_spec(layers, cfg.attention_blocks)  # validates and orders
    path = Path(adapter_dir) / CONFIG_NAME
    data = json.loads(path.read_text())
    data["expression_layers"] = layers
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path
