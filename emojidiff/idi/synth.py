"""One IDI round's synthesis: candidate enumeration, per-process shards, resumable journals, merge.

Candidates are a pure function of the source manifests, the config and the round index; candidate ``j`` belongs to
process ``j mod world``. Each process appends one JSON line per finished candidate to its own journal
``shards/shard-<rank>-of-<world>.jsonl`` (the target image is first written to a temp file and renamed into place,
then the line is written and fsynced in one call). On start, every journal in ``shards/`` is read and finished
candidates are skipped; a torn last line (a kill mid-write) is cut off. Because each candidate's randomness is
keyed by its own seed, a resumed round produces exactly the records of an uninterrupted one: no duplicate, none
missing. The merge (main process) writes ``candidates.jsonl``, ``triplets.jsonl`` and the report atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.manifest import Triplet, write_manifest
from ..errors import InputError, NoFaceError
from ..faces import select_face
from ..faces.base import FaceAnalyzer
from .config import IDIConfig
from .filters import Scores, cosine, expression_error, filter_reasons
from .report import draw_histograms, summarize, write_json, write_markdown
from .sources import SourceImage

FINGERPRINT_FILE = "round.json"
REPORT_FILE = "report.json"


@dataclass
class Candidate:
    """One (template, other identity) pair of a round, with its prompt and seed."""

    cid: str
    round: int
    index: int  # position in the round's candidate list (decides the shard)
    template: SourceImage
    identity: SourceImage
    prompt: str
    seed: int

    def key(self) -> list:
        return [self.cid, self.template.raw, self.template.person, self.identity.raw, self.identity.person,
                self.prompt, self.seed]  # fmt: skip


def enumerate_candidates(
    templates: list[SourceImage], identities: list[SourceImage], cfg: IDIConfig, round_index: int
) -> tuple[list[Candidate], int]:
    """All candidates of a round and the number of templates that had no identity of another person.

    For template ``i``, up to ``identities_per_template`` distinct other persons are drawn, then one reference image
    of each, a prompt and a seed, from a generator keyed by ``(seed, round, i)``: the list depends on nothing else.
    """
    persons: dict[str, list[SourceImage]] = {}
    for s in identities:
        persons.setdefault(s.person, []).append(s)
    names = list(persons)
    out: list[Candidate] = []
    lonely = 0
    for i, t in enumerate(templates):
        rng = np.random.default_rng([cfg.seed, round_index, i])
        others = [p for p in names if p != t.person]
        if not others:
            lonely += 1
            continue
        k = min(cfg.identities_per_template, len(others))
        for j, pi in enumerate(rng.choice(len(others), size=k, replace=False)):
            refs = persons[others[int(pi)]]
            ref = refs[int(rng.integers(len(refs)))]
            prompt = str(cfg.prompts[int(rng.integers(len(cfg.prompts)))])
            prompt = prompt.replace("{style}", ref.style or "").strip()
            seed = int(rng.integers(2**31 - 1))
            out.append(Candidate(f"r{round_index}-{i:06d}-{j:02d}", round_index, len(out), t, ref, prompt, seed))
    return out, lonely


def shard_of(candidates: list[Candidate], rank: int, world: int) -> list[Candidate]:
    """The candidates process ``rank`` of ``world`` owns: every ``world``-th one, starting at ``rank``."""
    return candidates[rank::world]


# ---------------------------------------------------------------------------------------------- scoring
class Scorer:
    """Scores images against a template and an identity reference with a face analyser (references cached)."""

    def __init__(self, analyzer: FaceAnalyzer):
        self.fa = analyzer
        self._refs: dict[str, tuple[np.ndarray, dict]] = {}

    def measure(self, img: Image.Image, what: str) -> tuple[np.ndarray, dict]:
        face = select_face(self.fa.detect(img), what)
        emb = np.asarray(self.fa.identity_embedding(img, face), dtype=np.float64).ravel()
        return emb / max(np.linalg.norm(emb), 1e-12), self.fa.measure_expression(img, face)

    def reference(self, path: str, what: str) -> tuple[np.ndarray, dict]:
        if path not in self._refs:
            from ..io import load_image

            self._refs[path] = self.measure(load_image(path, what), f"{what} '{path}'")
        return self._refs[path]

    def score(self, img: Image.Image, template: str, identity: str) -> Scores:
        """Scores of ``img``; NaN scores when no face is found in it (the filters then reject it)."""
        id_a, exp_t = self.reference(template, "expression template")
        id_b, _ = self.reference(identity, "identity image")
        try:
            emb, exp = self.measure(img, "a generated image")
        except NoFaceError:
            return Scores(float("nan"), float("nan"), float("nan"))
        return Scores(expression_error(exp, exp_t), cosine(emb, id_b), cosine(emb, id_a))


# ---------------------------------------------------------------------------------------------- journals
def shard_path(round_dir: Path, rank: int, world: int) -> Path:
    return Path(round_dir) / "shards" / f"shard-{rank:05d}-of-{world:05d}.jsonl"


def read_journal(path: Path) -> list[dict]:
    """Complete records of a journal (a torn last line, from a kill mid-write, is ignored)."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # only a torn tail can be incomplete: every line is written and fsynced in one call
    return out


def _cut_torn_tail(path: Path) -> None:
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def all_records(round_dir: Path) -> dict[str, dict]:
    """Every finished record of a round, from all journals (whatever world size wrote them), by candidate id."""
    recs: dict[str, dict] = {}
    for p in sorted((Path(round_dir) / "shards").glob("shard-*.jsonl")):
        for r in read_journal(p):
            recs.setdefault(r["id"], r)
    return recs


def candidates_digest(candidates: list[Candidate]) -> str:
    return hashlib.sha256(json.dumps([c.key() for c in candidates]).encode()).hexdigest()


def check_fingerprint(round_dir: Path, cfg: IDIConfig, candidates: list[Candidate], adapter: str, rank: int) -> None:
    """Record what a round is made from, or check that a resumed round is made from the same."""
    want = {"config": cfg.generation_fingerprint(), "candidates": candidates_digest(candidates),
            "n_candidates": len(candidates), "adapter": os.path.abspath(adapter)}  # fmt: skip
    path = Path(round_dir) / FINGERPRINT_FILE
    if path.is_file():
        have = json.loads(path.read_text())
        diff = sorted(k for k in want if have.get(k) != json.loads(json.dumps(want[k])))
        if diff:
            raise InputError(
                f"'{round_dir}' holds a round made with other {', '.join(diff)}: use another --out folder, "
                f"or delete it to start over"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{rank}.tmp")
    tmp.write_text(json.dumps(want, indent=2, sort_keys=True))
    tmp.replace(path)


def _save_png(img: Image.Image, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- synthesis
def process_candidate(pipe, c: Candidate, cfg: IDIConfig, alteration, scorer: Scorer, round_dir: Path) -> dict:
    """Generate G, alter its identity, score it and save G'; returns the candidate's record."""
    rec = {
        "id": c.cid, "round": c.round, "template": c.template.raw, "template_person": c.template.person,
        "identity": c.identity.raw, "identity_person": c.identity.person, "prompt": c.prompt, "seed": c.seed,
        "target": None, "strength": None, "attempts": [],
    }  # fmt: skip
    try:
        pipe.set_progress_bar_config(disable=True)
        g = pipe(
            c.prompt, identity=c.identity.image, expression=c.template.image, negative_prompt=cfg.negative_prompt,
            id_scale=cfg.id_scale, exp_scale=cfg.exp_scale, num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale, seed=c.seed, height=cfg.resolution, width=cfg.resolution,
        ).images[0]  # fmt: skip

        def score(img):
            return scorer.score(img, c.template.image, c.identity.image)

        rec.update(score(g).to_dict("g_"))
        alt = alteration.alter(
            g, identity_image=c.identity.image, identity=pipe.encode_identity(c.identity.image), prompt=c.prompt,
            seed=c.seed + 1, score=score,
        )  # fmt: skip
        rec.update(alt.scores.to_dict())
        rec["strength"] = alt.strength
        rec["attempts"] = [a.record() for a in alt.attempts]
        reasons = filter_reasons(alt.scores, cfg)
        images = Path(round_dir) / "images"
        images.mkdir(parents=True, exist_ok=True)
        if cfg.save_generated:
            _save_png(g, images / f"{c.cid}-G.png")
        _save_png(alt.image, images / f"{c.cid}.png")
        rec["target"] = f"images/{c.cid}.png"
    except NoFaceError as e:
        reasons, rec["error"] = ["no_face"], str(e)
    rec["reasons"] = reasons
    rec["kept"] = not reasons
    return rec


def synthesize_round(
    pipe,
    candidates: list[Candidate],
    cfg: IDIConfig,
    round_dir: str | Path,
    *,
    rank: int = 0,
    world: int = 1,
    alteration=None,
    scorer: Scorer | None = None,
    on_record: Callable[[dict], None] | None = None,
    show_progress: bool = True,
) -> int:
    """Process this rank's unfinished candidates, appending each record to its journal. Returns how many it did.

    ``on_record`` is called after each record is committed (progress reporting; tests use it to simulate a crash).
    """
    from ..faces import get_face_analyzer
    from .alter import make_alteration

    round_dir = Path(round_dir)
    mine = shard_of(candidates, rank, world)
    done = set(all_records(round_dir))
    todo = [c for c in mine if c.cid not in done]
    if not todo:
        return 0
    alteration = alteration or make_alteration(cfg.alteration, pipe, cfg)
    scorer = scorer or Scorer(get_face_analyzer(cfg.score_backend) if cfg.score_backend else pipe.face_analyzer)
    path = shard_path(round_dir, rank, world)
    path.parent.mkdir(parents=True, exist_ok=True)
    _cut_torn_tail(path)
    n = 0
    with open(path, "ab") as f:
        for c in tqdm(todo, desc=f"IDI round {candidates[0].round} [rank {rank}]", disable=not show_progress):
            rec = process_candidate(pipe, c, cfg, alteration, scorer, round_dir)
            f.write((json.dumps(rec, sort_keys=True) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
            n += 1
            if on_record is not None:
                on_record(rec)
    return n


def merge_round(round_dir: str | Path, candidates: list[Candidate], cfg: IDIConfig, lonely: int = 0) -> dict:
    """Gather every journal into ``candidates.jsonl`` and ``triplets.jsonl``, and write the round report.

    Raises when a candidate has no record yet (a process has not finished: run the round again to complete it).
    """
    round_dir = Path(round_dir)
    recs = all_records(round_dir)
    missing = [c.cid for c in candidates if c.cid not in recs]
    if missing:
        raise InputError(
            f"round in '{round_dir}' is incomplete: {len(missing)} of {len(candidates)} candidates have no record "
            f"(run the same command again to finish it)"
        )
    ordered = [recs[c.cid] for c in candidates]
    tmp = round_dir / "candidates.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))
    tmp.replace(round_dir / "candidates.jsonl")
    triplets = []
    by_id = {c.cid: c for c in candidates}
    for r in ordered:
        if not r["kept"]:
            continue
        c = by_id[r["id"]]
        meta = {k: v for k, v in r.items() if k not in ("template", "identity", "target", "prompt", "kept", "reasons")}
        meta.update(template_source=c.template.raw, identity_source=c.identity.raw)
        triplets.append(Triplet(c.template.image, [c.identity.image], str(round_dir / r["target"]), c.prompt, meta))
    write_manifest(round_dir / "triplets.jsonl", triplets)
    report = summarize(ordered, cfg, lonely)
    report["round"] = candidates[0].round if candidates else None
    draw_histograms(round_dir / "histograms.png", ordered, cfg)
    write_markdown(round_dir / "report.md", report, report["round"])
    write_json(round_dir / REPORT_FILE, report)  # last: its presence marks a finished round
    return report
