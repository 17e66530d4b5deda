"""Generation and scoring on the synthetic world, shared by ``emojidiff eval`` and ``emojidiff bench``.

Generation: :class:`AdapterMethod` is a runner method (``method(case, exp_scale, seed) -> image``) backed by an
adapter; its ``prepare`` generates every (case, scale) image in batches (one diffusers call for many cases, each with
its own identity, template, prompt and noise seed), about twice as fast per image as one call per image on a CPU.
Three modes: ``full`` (identity + RGB template), ``identity_only`` (identity branch alone, exp_scale 0, the template's
expression named in the prompt: IP-Adapter-FaceID-like) and ``coarse`` (the template's expression factors measured
with the *training* analyser and re-rendered on a canonical neutral face and style, which is then the template: the
synthetic stand-in for landmark / ControlNet-style coarse expression control).

Scoring (:func:`evaluate_world`) uses only evaluation models: the ``synthetic-eval`` analysers and the eval-only
style classifier. Definitions (all at the main exp_scale, averaged over cases; the face metrics over the outputs in
which the eval analyser finds a face, whose rate is ``face_found``):

* ``id_sim``: cosine of eval identity embeddings, output vs the mean of the identity references;
* ``exp_err``: mean over the 13 expression factors of ``|true template factor - eval-measured output factor| /
  (factor range)``: a fraction of each factor's range (0 = exact, 0.25 = a quarter of the range off);
* ``lms_err``: mean over the 6 landmark ratios of ``|eval-measured output ratio - exact ratio of the ideal output|``
  (the identity person wearing the template's true expression; ratios as in ``render.face_geometry``);
* ``leakage``: cosine of the output's eval identity embedding with a neutral reference render of the template's
  person; ``unrelated_id_sim``: mean cosine between the references of different held-out people (the floor);
* ``style_leakage``: for each output, its *contested* style heads are those of background, shading, palette, glasses
  (none/round/square) and hat (yes/no) where the template's value differs from the prompt's (a style word the prompt
  does not say is its default: no glasses, no hat, natural palette); background only when neither the prompt nor the
  template is monochrome (a monochrome palette greys the background out). The output's score is the fraction of
  its contested heads where the style classifier reads the *template's* value; ``style_leakage`` is the mean over
  outputs with at least one contested head (0 = no style copied from the template);
* ``prompt_acc``: per output, the fraction of style heads (background skipped on monochrome prompts) where the
  classifier reads the prompt's value; mean over outputs;
* ``quality`` (blind, higher is better): mean face-presence probability of the eval face network;
  ``quality_fd`` (lower is better): Fréchet distance between diagonal Gaussians fitted to the eval style network's
  pooled features (144-d) of the outputs and of 512 real renders of held-out people; ``quality_fd_floor`` (top
  level) is the same distance for a second set of real renders of the outputs' count: what a perfect method gets;
* ``intensity_r``: per case, Pearson correlation between exp_scale and the measured expression strength (the
  range-normalised expression distance from the same case's output at the lowest scale), averaged over cases.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..adapter.core import resolve_adapter
from ..adapter.step_cache import StepCachedProjection
from ..faces import get_face_analyzer
from .runner import Case, evaluate
from .synthetic_cases import EXPRESSION_SPANS, coarse_template

#: one line per metric, written into results files (the module docstring has the details)
DEFINITIONS = {
    "id_sim": "cosine of eval identity embeddings, output vs the mean of the identity references (higher is better)",
    "exp_err": "mean over the 13 expression factors of |true template factor - eval-measured output factor| / factor "
    "range: a fraction of the range (lower is better)",
    "lms_err": "mean over 6 landmark ratios of |eval-measured output ratio - exact ratio of the ideal output|",
    "leakage": "cosine of eval identity embeddings, output vs a neutral render of the template's person",
    "unrelated_id_sim": "mean cosine between references of different held-out people: the floor leakage should reach",
    "style_leakage": "over style heads where template and prompt differ (background skipped if either is "
    "monochrome), the fraction classified as the template's value; mean over outputs",
    "prompt_acc": "fraction of style heads classified as the prompt asks (unnamed words: defaults), mean over outputs",
    "quality": "mean face-presence probability of the eval face network (blind, higher is better)",
    "quality_fd": "Frechet distance of diagonal Gaussians of eval style-net features, outputs vs 512 real held-out "
    "renders (lower is better; quality_fd_floor: real renders vs real renders)",
    "intensity_r": "per-case Pearson correlation of exp_scale with the measured expression strength, mean over cases",
}
#: the analyser set that scores (never used in training)
EVAL_BACKEND = "synthetic-eval"
#: the analyser set coarse control measures templates with (the training one: a method may use it)
TRAIN_BACKEND = "synthetic"
MODES = ("full", "identity_only", "coarse")


@dataclass
class GenSettings:
    """How images are generated (the same for every method of a run)."""

    steps: int = 20
    guidance: float = 4.0
    id_scale: float = 1.0
    batch: int = 16
    size: int = 64
    device: str = "cpu"


class PipelinePool:
    """Loads each adapter (with its recorded base and face backend) once, for all methods that use it."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._pipes: dict[str, object] = {}
        self.load_seconds = 0.0

    def get(self, adapter: str | Path):
        from ..pipeline import EmojiDiffPipeline

        key = str(resolve_adapter(adapter).resolve())
        if key not in self._pipes:
            t = time.perf_counter()
            pipe = EmojiDiffPipeline.from_pretrained(None, adapter=key).to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[key] = pipe
            self.load_seconds += time.perf_counter() - t
        return self._pipes[key]


@torch.no_grad()
def generate_batch(
    pipe,
    prompts: Sequence[str],
    identities: Sequence[np.ndarray | None],
    expressions: Sequence[torch.Tensor | None],
    seeds: Sequence[int],
    *,
    id_scale: float,
    exp_scale: float,
    steps: int,
    guidance: float,
    size: int = 64,
) -> list[Image.Image]:
    """One diffusers call for several cases, each with its own identity embedding, template features (None: the
    branch's null input), prompt and noise seed; the scales are shared. Sample ``k`` is what ``pipe(prompts[k], ...,
    seed=seeds[k])`` makes, up to batched floating-point rounding (tested).

    diffusers' SD pipelines take ``ip_adapter_image_embeds`` as one input shared by every prompt (they tile it
    batch-size times, so per-sample rows would be mixed into every sample's attention); the per-sample embeddings
    are therefore handed to the denoising loop directly, for this call only, in the layout diffusers builds itself
    (all negatives, then all positives).
    """
    if not prompts:
        return []
    do_cfg = guidance > 1 and pipe.unet.config.get("time_cond_proj_dim") is None
    has_exp = any(e is not None for e in expressions)
    pipe.set_scales(id_scale, exp_scale if has_exp else 0.0)
    per = [pipe.ip_adapter_embeds(i, e, do_cfg) for i, e in zip(identities, expressions, strict=True)]
    embeds = []
    for branch in range(len(per[0])):
        parts = [p[branch] for p in per]
        if do_cfg:
            parts = [p.chunk(2)[0] for p in parts] + [p.chunk(2)[1] for p in parts]
        embeds.append(torch.cat(parts))
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    base = pipe.pipe
    base.prepare_ip_adapter_image_embeds = lambda *args, **kwargs: embeds  # this call only (removed below)
    try:
        out = base(prompt=list(prompts), ip_adapter_image_embeds=embeds, num_inference_steps=steps,
                   guidance_scale=guidance, generator=gens, height=size, width=size)  # fmt: skip
    finally:
        del base.prepare_ip_adapter_image_embeds
        proj = base.unet.encoder_hid_proj
        if isinstance(proj, StepCachedProjection):
            proj.clear()
    return list(out.images)


def _case_key(case: Case) -> tuple:
    return (case.identity_key, case.template_key, case.prompt, case.meta.get("case_seed"))


def measure_template(case: Case) -> dict[str, float]:
    """The template's expression factors as the *training* analyser measures them (neutral if it finds no face)."""
    fa = get_face_analyzer(TRAIN_BACKEND)
    faces = fa.detect(case.template)
    if not faces:
        return {}
    return {k: v for k, v in fa.measure_expression(case.template, faces[0]).items() if k in EXPRESSION_SPANS}


class AdapterMethod:
    """A benchmark method backed by an adapter (see the module docstring for the modes)."""

    def __init__(self, pool: PipelinePool, adapter: str | Path, mode: str = "full", settings: GenSettings | None = None,
                 name: str | None = None, progress: bool = False):  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.pool, self.adapter, self.mode = pool, adapter, mode
        self.settings = settings or GenSettings()
        self.name = name or str(adapter)
        self.progress = progress
        self._images: dict[tuple, Image.Image] = {}
        self.coarse: dict[tuple, Image.Image] = {}
        self.seconds = 0.0
        self.n_images = 0

    def _scale_key(self, s: float) -> float | None:
        return None if self.mode == "identity_only" else float(s)

    def template_for(self, case: Case) -> Image.Image | None:
        if self.mode == "identity_only":
            return None
        if self.mode == "coarse":
            k = _case_key(case)
            if k not in self.coarse:
                self.coarse[k] = coarse_template(measure_template(case), self.settings.size)
            return self.coarse[k]
        return case.template

    def prepare(self, cases: Sequence[Case], scales: Sequence[float], seed: int) -> None:
        """Generate every (case, scale) image not made yet, in batches of ``settings.batch`` cases."""
        st = self.settings
        pipe = self.pool.get(self.adapter)
        todo: dict[float | None, dict[tuple, Case]] = {}
        for s in scales:
            sk = self._scale_key(s)
            for c in cases:
                if (_case_key(c), seed, sk) not in self._images:
                    todo.setdefault(sk, {})[_case_key(c)] = c
        total = sum(len(v) for v in todo.values())
        if not total:
            return
        ident = {_case_key(c): pipe.encode_identity(c.identity) for c in cases}
        feats: dict[tuple, torch.Tensor | None] = {}
        for c in cases:
            tpl = self.template_for(c)
            feats[_case_key(c)] = None if tpl is None else pipe.encode_expression(tpl)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"generate {self.name}", unit="img", mininterval=2)
        t = time.perf_counter()
        for sk, by_key in todo.items():
            group = list(by_key.values())
            for k in range(0, len(group), st.batch):
                chunk = group[k : k + st.batch]
                keys = [_case_key(c) for c in chunk]
                prompts = [c.meta["expression_prompt"] if self.mode == "identity_only" else c.prompt for c in chunk]
                imgs = generate_batch(
                    pipe, prompts, [ident[q] for q in keys], [feats[q] for q in keys],
                    [c.meta.get("case_seed", seed) for c in chunk], id_scale=st.id_scale,
                    exp_scale=0.0 if sk is None else sk, steps=st.steps, guidance=st.guidance, size=st.size,
                )  # fmt: skip
                for q, img in zip(keys, imgs, strict=True):
                    self._images[(q, seed, sk)] = img
                if bar is not None:
                    bar.update(len(chunk))
        self.seconds += time.perf_counter() - t
        self.n_images += total
        if bar is not None:
            bar.close()

    def __call__(self, case: Case, exp_scale: float, seed: int) -> Image.Image:
        key = (_case_key(case), seed, self._scale_key(exp_scale))
        if key not in self._images:
            self.prepare([case], [exp_scale], seed)
        return self._images[key]


# ---------------------------------------------------------------------------------------------------- scoring
def _pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _labels(style: Mapping) -> dict[str, int]:
    from ..synthetic.factors import Style
    from ..synthetic.style import style_labels

    return style_labels(Style.from_dict(dict(style)))


class StyleJudge:
    """The eval-only style classifier: prompt following and style leakage (definitions in the module docstring)."""

    def __init__(self, path: str | Path | None = None):
        from ..synthetic.base_model import ANALYSERS_DIR
        from ..synthetic.style import load_style_net

        self.net = load_style_net(path or ANALYSERS_DIR / "eval" / "style.safetensors")
        self._last: tuple[Image.Image | None, dict[str, int]] = (None, {})

    @torch.no_grad()
    def classify(self, image: Image.Image) -> dict[str, int]:
        if self._last[0] is not image:
            logits = self.net(_pixels([image]))
            self._last = (image, {k: int(v.argmax(1)[0]) for k, v in logits.items()})
        return self._last[1]

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image], batch: int = 256) -> np.ndarray:
        """Pooled backbone features ``(N, 144)``."""
        out = []
        for k in range(0, len(images), batch):
            x = _pixels(images[k : k + batch])
            out.append(self.net.features(self.net.norm(x)).mean(dim=(2, 3)).numpy())
        return np.concatenate(out).astype(np.float64)

    def style_leakage(self, image: Image.Image, case: Case) -> float:
        tpl, prm = case.meta["template_style"], case.meta["prompt_style"]
        t, p = _labels(tpl), _labels(prm)
        heads = [h for h in t if t[h] != p[h]]
        if "monochrome" in (tpl["palette"], prm["palette"]) and "background" in heads:
            heads.remove("background")
        if not heads:
            return float("nan")
        got = self.classify(image)
        return float(np.mean([got[h] == t[h] for h in heads]))

    def prompt_acc(self, image: Image.Image, case: Case) -> float:
        prm = case.meta["prompt_style"]
        p = _labels(prm)
        heads = [h for h in p if not (h == "background" and prm["palette"] == "monochrome")]
        got = self.classify(image)
        return float(np.mean([got[h] == p[h] for h in heads]))


def frechet_diag(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between diagonal Gaussians fitted to two feature sets (stable with few samples)."""
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + ((a.std(0) - b.std(0)) ** 2).sum())


class QualityJudge:
    """Blind quality: eval face presence per image, and feature statistics against real renders."""

    def __init__(self, style: StyleJudge, seed: int = 0, n_reference: int = 512):
        from ..synthetic.dataset import HELDOUT_IDS, sample_portraits
        from ..synthetic.render import render

        self.style, self.seed = style, seed
        self._render = lambda n, s: render(sample_portraits(n, s, HELDOUT_IDS), 64)
        self.reference = self.style.features(self._render(n_reference, 1_000_003 + seed))

    @torch.no_grad()
    def presence(self, image: Image.Image, case: Case) -> float:
        nets = get_face_analyzer(EVAL_BACKEND).nets
        return float(nets.presence(_pixels([image]))[0])

    def feature_distance(self, images: Sequence[Image.Image], cases: Sequence[Case]) -> float:
        if len(images) < 2:
            return float("nan")
        return frechet_diag(self.style.features(list(images)), self.reference)

    def floor(self, n: int) -> float:
        """The distance a perfect method would get with ``n`` outputs: ``n`` other real renders."""
        if n < 2:
            return float("nan")
        return frechet_diag(self.style.features(self._render(n, 2_000_003 + self.seed)), self.reference)


def evaluate_world(
    methods: Mapping[str, Callable],
    cases: Sequence[Case],
    *,
    seed: int = 0,
    exp_scales: Sequence[float] = (1.0,),
    main_scale: float = 1.0,
    keep_images: bool = False,
    progress: bool = False,
) -> dict:
    """:func:`~emojidiff.eval.runner.evaluate` with the synthetic world's evaluation models, ground truth and
    scorers; adds ``unrelated_id_sim``, ``quality_fd_floor`` and ``timings`` (seconds)."""
    t0 = time.perf_counter()
    style = StyleJudge()
    quality = QualityJudge(style, seed)
    res = evaluate(
        methods, cases, get_face_analyzer(EVAL_BACKEND), seed=seed, exp_scales=exp_scales, main_scale=main_scale,
        scorers={"style_leakage": style.style_leakage, "prompt_acc": style.prompt_acc, "quality": quality.presence},
        set_scorers={"quality_fd": quality.feature_distance}, expression_spans=EXPRESSION_SPANS,
        keep_images=keep_images, progress=progress,
    )  # fmt: skip
    floor = res["unrelated_level"]
    res["unrelated_id_sim"] = None if math.isnan(floor) else round(floor, 4)
    fd_floor = quality.floor(len(cases))
    res["quality_fd_floor"] = None if math.isnan(fd_floor) else round(fd_floor, 4)
    ours = {k: m for k, m in methods.items() if isinstance(m, AdapterMethod)}
    gen = {k: round(m.seconds, 2) for k, m in ours.items()}
    n_img = {k: m.n_images for k, m in ours.items()}
    load = sum({id(m.pool): m.pool.load_seconds for m in ours.values()}.values())
    res["timings"] = {
        "generate_s": gen,
        "images": n_img,
        "s_per_image": {k: round(gen[k] / n_img[k], 4) for k in gen if n_img[k]},
        "load_s": round(load, 2),
        "score_s": round(time.perf_counter() - t0 - sum(gen.values()) - load, 2),
    }
    return res
