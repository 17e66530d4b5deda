"""Source manifests for IDI and the layer probe: one face image per JSON line (format: see :mod:`emojidiff.idi`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..data.manifest import read_jsonl, write_jsonl
from ..errors import InputError


@dataclass
class SourceImage:
    """One row of a source manifest; ``image`` is resolved against the manifest's folder."""

    image: str
    person: str
    prompt: str | None = None
    style: str | None = None
    meta: dict = field(default_factory=dict)
    #: the path exactly as written in the manifest (stable across machines; used in candidate records)
    raw: str = ""


def read_sources(path: str | os.PathLike, what: str = "source manifest") -> list[SourceImage]:
    """Read a source manifest (JSONL with ``image`` and ``person``), with one-line errors naming file and line."""
    path = Path(path)
    out: list[SourceImage] = []
    for n, d in read_jsonl(path, what, ("image", "person")):
        raw = str(d.pop("image"))
        image = raw if os.path.isabs(raw) else str(path.parent / raw)
        if not os.path.isfile(image):
            raise InputError(f"{what} '{path}' line {n}: image '{raw}' does not exist")
        out.append(
            SourceImage(
                image=image,
                person=str(d.pop("person")),
                prompt=d.pop("prompt", None),
                style=d.pop("style", None),
                meta=d,
                raw=raw,
            )
        )
    if not out:
        raise InputError(f"{what} '{path}' holds no images")
    return out


def write_sources(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write a source manifest atomically (rows are dicts with at least ``image`` and ``person``)."""
    write_jsonl(path, [json.dumps(r, sort_keys=True) for r in rows])
