"""Deterministic sets of portraits and the ``manifest.jsonl`` format written by ``emojidiff world render``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .factors import (
    TEMPLATES,
    Expression,
    Identity,
    Portrait,
    Style,
    sample_expression,
    sample_portrait,
)
from .render import render

#: Identity ids used for training (analysers, base model) and held out for evaluation.
TRAIN_IDS = (0, 100_000)
HELDOUT_IDS = (1_000_000, 1_100_000)


def sample_portraits(n: int, seed: int, identity_ids: tuple[int, int] = TRAIN_IDS) -> list[Portrait]:
    """``n`` random portraits, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [sample_portrait(rng, identity_ids) for _ in range(n)]


def sample_identity_sets(
    n_ids: int, per_id: int, seed: int | list[int], identity_ids: tuple[int, int] = TRAIN_IDS
) -> list[Portrait]:
    """``n_ids`` people with ``per_id`` portraits each (random expression and style), grouped by person."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(*identity_ids), size=n_ids, replace=False)
    out = []
    for iid in ids:
        ident = Identity.from_id(int(iid))
        out += [Portrait(int(iid), ident, sample_expression(rng), Style.sample(rng)) for _ in range(per_id)]
    return out


def write_renders(
    portraits: list[Portrait],
    out: str | Path,
    size: int = 64,
    chunk: int = 256,
    *,
    subfolder: str = "",
    manifest: str = "manifest.jsonl",
    digits: int | None = None,
) -> Path:
    """Write ``000000.png``... (into ``out/subfolder`` if given) and ``out/manifest`` (one record per image, its
    ``file`` relative to ``out``); returns the manifest's path."""
    out = Path(out)
    (out / subfolder).mkdir(parents=True, exist_ok=True)
    path = out / manifest
    width = digits or max(6, len(str(len(portraits))))
    prefix = f"{subfolder}/" if subfolder else ""
    with open(path, "w") as f:
        for start in range(0, len(portraits), chunk):
            batch = portraits[start : start + chunk]
            for k, (p, img) in enumerate(zip(batch, render(batch, size), strict=True)):
                name = f"{prefix}{start + k:0{width}d}.png"
                img.save(out / name)
                rec = {"file": name, "size": size, **p.to_record()}
                f.write(json.dumps(rec) + "\n")
    return path


def read_manifest(path: str | Path) -> Iterator[dict]:
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


#: Gallery people: (identity id, style) pairs chosen to cover hair styles, skin tones and all styles.
GALLERY_STYLES = [
    Style("blue", "flat", "natural", "none", "none", "grey", 0.5),
    Style("green", "shaded", "natural", "round", "none", "white", 0.2),
    Style("yellow", "sketch", "natural", "none", "none", "blue", 0.5),
    Style("purple", "flat", "pastel", "none", "red", "green", 0.5),
    Style("orange", "shaded", "vivid", "square", "none", "black", 0.8),
    Style("grey", "flat", "monochrome", "none", "none", "red", 0.5),
    Style("pink", "shaded", "natural", "none", "blue", "purple", 0.3),
    Style("red", "sketch", "pastel", "round", "none", "yellow", 0.5),
    Style("blue", "shaded", "natural", "none", "none", "orange", 0.6),
    Style("green", "flat", "vivid", "none", "black", "white", 0.5),
]
GALLERY_IDENTITIES = [3, 11, 17, 25, 42, 58, 77, 101, 123, 256]


def write_gallery(root: str | Path, size: int = 96) -> list[Path]:
    """Regenerate ``examples/identities`` (one neutral portrait per person) and ``examples/expressions``
    (every named template, each on a different person and style). Returns the written files."""
    root = Path(root)
    written: list[Path] = []
    people = root / "identities"
    people.mkdir(parents=True, exist_ok=True)
    records = []
    for k, (iid, style) in enumerate(zip(GALLERY_IDENTITIES, GALLERY_STYLES, strict=True)):
        p = Portrait(iid, Identity.from_id(iid), Expression(), style)
        path = people / f"person_{k:02d}_id{iid}.png"
        render(p, size).save(path)
        written.append(path)
        records.append({"file": path.name, **p.to_record()})
    (people / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    exprs = root / "expressions"
    exprs.mkdir(parents=True, exist_ok=True)
    records = []
    for k, (name, e) in enumerate(TEMPLATES.items()):
        iid = GALLERY_IDENTITIES[(k * 3 + 1) % len(GALLERY_IDENTITIES)] + 1000
        style = GALLERY_STYLES[k % len(GALLERY_STYLES)]
        p = Portrait(iid, Identity.from_id(iid), e, style)
        path = exprs / f"{name}.png"
        render(p, size).save(path)
        written.append(path)
        records.append({"file": path.name, "template": name, **p.to_record()})
    (exprs / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return written
