"""``emojidiff bench`` on the synthetic world: every method on the same held-out cases, with one seed.

Methods (results keys; see :mod:`emojidiff.eval.synthetic` for the modes and the metric definitions):

* ``identity_only``: the ``idi`` adapter's identity branch alone (exp_scale 0), the template's expression named in
  the prompt by its caption word: what an IP-Adapter-FaceID-like model can do;
* ``coarse_control``: the ``idi`` adapter fed, instead of the RGB template, a render of the template's expression
  factors (measured with the *training* analyser) on a canonical neutral face and style: coarse, geometry-only
  expression control as landmark / ControlNet-style conditioning gives (no template identity or style to leak,
  but only what the measurement captures);
* ``naive``, ``idi``, ``ica``: the bundled adapters ``synthetic-naive`` (stage 1 round 0), ``synthetic-idi`` (after
  the IDI rounds) and ``synthetic-ica`` (stage 2), with the RGB template.

A method whose adapter is not installed is reported as skipped, with the reason, instead of failing the run.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import AdapterError, EmojiDiffError
from .figures import image_grid, tradeoff_plot
from .runner import markdown_table, write_report
from .synthetic import DEFINITIONS, EVAL_BACKEND, AdapterMethod, GenSettings, PipelinePool, evaluate_world
from .synthetic_cases import heldout_cases, ideal_output

#: adapter roles and the bundled adapter of each (override one with ``--adapter ROLE=DIR``)
ROLES: dict[str, str] = {"naive": "synthetic-naive", "idi": "synthetic-idi", "ica": "synthetic-ica"}
#: method key -> (adapter role, generation mode, description)
METHODS: dict[str, tuple[str, str, str]] = {
    "identity_only": ("idi", "identity_only", "identity branch only, exp_scale 0, expression word in the prompt"),
    "coarse_control": ("idi", "coarse", "idi adapter; template = measured factors re-rendered on a neutral face"),
    "naive": ("naive", "full", "stage 1, round 0 (same-identity pairs)"),
    "idi": ("idi", "full", "stage 1 after the IDI rounds"),
    "ica": ("ica", "full", "stage 2 (ICA) on top of idi"),
}
TABLE_COLUMNS = ("id_sim", "exp_err", "lms_err", "leakage", "style_leakage", "prompt_acc", "quality", "quality_fd",
                 "intensity_r", "face_found")  # fmt: skip


@dataclass
class BenchSettings:
    """Case counts and generation settings of a run.

    FULL: 256 pairs, 5,376 images (about 14 min on one CPU core at 0.14 s per 64-px image, 20 steps, batches of 16);
    QUICK: 24 pairs, 312 images (about 1 min).
    """

    n_identities: int = 16
    n_templates: int = 16  # every named expression once
    exp_scales: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    main_scale: float = 1.0
    gen: GenSettings = field(default_factory=GenSettings)
    n_grid: int = 8  # cases shown in the grids


FULL = BenchSettings()
QUICK = BenchSettings(n_identities=6, n_templates=4, exp_scales=(0.0, 0.5, 1.0), n_grid=6)


def check_world_adapter(adapter: str | Path) -> str | None:
    """Check that an adapter exists and was made for the synthetic world's base (configs only, nothing loaded).

    Returns a warning when the adapter was made with the evaluation analysers (its scores would not be independent).
    """
    from ..adapter.config import EmojiDiffConfig, UNetSignature
    from ..adapter.core import meta_unet, read_unet_config, resolve_adapter

    path = resolve_adapter(adapter)
    cfg = EmojiDiffConfig.load(path)
    theirs = UNetSignature.of(meta_unet(read_unet_config("synthetic")))
    if cfg.signature != theirs:
        raise AdapterError(
            f"adapter '{adapter}' was made for {cfg.signature.describe()}, not for the synthetic world's base "
            f"({theirs.describe()})"
        )
    if cfg.face_backend == EVAL_BACKEND:
        return f"adapter '{adapter}' uses the evaluation analysers ({EVAL_BACKEND}): its scores are not independent"
    return None


def run_bench(
    out: str | Path,
    seed: int = 0,
    settings: BenchSettings = FULL,
    adapters: Mapping[str, str] | None = None,
    methods: Sequence[str] | None = None,
    progress: bool = False,
    command: str | None = None,
) -> dict:
    """Run the benchmark, write ``out/results.json``, ``results.md``, grids and the trade-off plot; return results."""
    t0 = time.perf_counter()
    out = Path(out)
    roles = {**ROLES, **dict(adapters or {})}
    keys = list(methods or METHODS)
    pool = PipelinePool(settings.gen.device)
    chosen: dict[str, AdapterMethod] = {}
    skipped: dict[str, str] = {}
    warnings: list[str] = []
    for key in keys:
        role, mode, _ = METHODS[key]
        try:
            warning = check_world_adapter(roles[role])
        except EmojiDiffError as e:
            skipped[key] = str(e)
            continue
        if warning and warning not in warnings:
            warnings.append(warning)
        chosen[key] = AdapterMethod(pool, roles[role], mode, settings.gen, name=key, progress=progress)
    cases = heldout_cases(settings.n_identities, settings.n_templates, seed)
    res = evaluate_world(chosen, cases, seed=seed, exp_scales=settings.exp_scales, main_scale=settings.main_scale,
                         keep_images=True, progress=progress)  # fmt: skip
    images = res.pop("_images")
    methods_out: dict[str, dict] = {}
    for key in keys:
        role, mode, desc = METHODS[key]
        if key in skipped:
            methods_out[key] = {"skipped": skipped[key], **{k: None for k in TABLE_COLUMNS}, "description": desc}
        else:
            methods_out[key] = {**res["methods"][key], "adapter": str(roles[role]), "description": desc}
    res["methods"] = methods_out
    res["skipped"] = skipped
    res["warnings"] = warnings
    res["n_identities"], res["n_templates"] = settings.n_identities, settings.n_templates
    res["main_scale"] = settings.main_scale
    res["settings"] = asdict(settings.gen)
    res["definitions"] = DEFINITIONS
    res["command"] = command or " ".join(shlex.quote(a) for a in ["emojidiff", *sys.argv[1:]])
    files = _figures(out, res, cases, chosen, images, settings)
    res["files"] = ["results.json", "results.md", *files]
    res["timings"]["total_s"] = round(time.perf_counter() - t0, 2)
    write_report(res, out, markdown=bench_markdown(res))
    return res


def grid_indices(n_cases: int, n: int) -> list[int]:
    """``n`` case indices spread over the list (cases are identity-major, so the grid shows several people)."""
    n = min(n, n_cases)
    return sorted({round(k * (n_cases - 1) / max(n - 1, 1)) for k in range(n)}) if n else []


def _figures(out: Path, res: dict, cases, chosen: dict[str, AdapterMethod], images: dict, settings) -> list[str]:
    keys = list(res["methods"])
    shown = grid_indices(len(cases), settings.n_grid)
    main = settings.main_scale
    header = ["identity", "template", "coarse template", "ideal (exact)", *keys]
    rows = []
    coarse = chosen.get("coarse_control")
    for ci in shown:
        c = cases[ci]
        row = [c.identity[0], c.template, coarse.template_for(c) if coarse else None, ideal_output(c)]
        row += [images.get((k, ci, main)) for k in keys]
        rows.append(row)
    labels = [f"{cases[ci].identity_key[7:]} {cases[ci].meta['template_name']}" for ci in shown]
    image_grid(
        rows, header, out / "grid_cases.png", labels
    )  # ideal: the person, the template's expression, the prompt's style
    scales = sorted(float(s) for s in res["exp_scales"])
    srows, labels = [], []
    for ci in shown[:: max(1, len(shown) // 2)][:2]:
        for k in keys:
            if k == "identity_only":
                continue
            tpl = chosen[k].template_for(cases[ci]) if k in chosen else cases[ci].template
            srows.append([tpl, *(images.get((k, ci, s)) for s in scales)])
            labels.append(f"{k} {cases[ci].meta['template_name']}")
    image_grid(srows, ["template", *(f"exp_scale {s:g}" for s in scales)], out / "grid_scales.png", labels)
    tradeoff_plot(res, out / "tradeoff.png")
    return ["grid_cases.png", "grid_scales.png", "tradeoff.png"]


def bench_markdown(res: dict) -> str:
    """results.md: the table, skipped methods, the trade-off over exp_scale, settings and timings."""
    lines = [f"# Synthetic-world benchmark (seed {res['seed']})", "", markdown_table(res, TABLE_COLUMNS).rstrip(), ""]
    lines.append(f"Unrelated-people identity similarity (the floor of leakage): {res.get('unrelated_id_sim')}; "
                 f"quality_fd of real renders (the floor of quality_fd): {res.get('quality_fd_floor')}.")  # fmt: skip
    lines += [f"\n**Warning**: {w}." for w in res.get("warnings", [])]
    lines += ["", "## Identity vs expression over exp_scale (id_sim / exp_err)", ""]
    scales = [str(float(s)) for s in res["exp_scales"]]
    lines.append("| method | " + " | ".join(scales) + " |")
    lines.append("|---" * (len(scales) + 1) + "|")
    for key, m in res["methods"].items():
        bs = m.get("by_scale") or {}
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        cells = [f"{fmt(bs[s]['id_sim'])} / {fmt(bs[s]['exp_err'])}" if s in bs else "–" for s in scales]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## Methods", ""]
    for key, m in res["methods"].items():
        lines.append(f"- `{key}`: {m['description']}" + (f" (skipped: {m['skipped']})" if m.get("skipped") else ""))
    t = res["timings"]
    lines += ["", "## Settings and timings", ""]
    lines.append(f"- {res['n_pairs']} pairs ({res['n_identities']} held-out identities x {res['n_templates']} "
                 f"templates), exp_scales {res['exp_scales']}, main scale {res['main_scale']}; "
                 f"generation: {json.dumps(res['settings'])}")  # fmt: skip
    lines.append(f"- seconds: total {t.get('total_s')}, loading {t.get('load_s')}, scoring {t.get('score_s')}; "
                 f"generation per method {json.dumps(t.get('generate_s'))}; "
                 f"per image {json.dumps(t.get('s_per_image'))}")  # fmt: skip
    lines.append(f"- command: `{res['command']}`")
    lines += ["", "Figures: `grid_cases.png` (main scale), `grid_scales.png`, `tradeoff.png`. Metric definitions: "
              "`emojidiff bench --help` and `emojidiff/eval/synthetic.py`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def with_overrides(base: BenchSettings, **overrides) -> BenchSettings:
    """``base`` with some fields replaced (None values are ignored); ``steps``/``batch``/... go to ``gen``."""
    gen_keys = {"steps", "guidance", "id_scale", "batch", "device", "size"}
    gen = replace(base.gen, **{k: v for k, v in overrides.items() if k in gen_keys and v is not None})
    rest = {k: v for k, v in overrides.items() if k not in gen_keys and v is not None}
    return replace(base, gen=gen, **rest)
