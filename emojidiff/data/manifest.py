"""Triplet manifests: one JSON object per line.

``{"template": "t.png", "identity": ["b.png" | "b.npy", ...], "target": "g.png", "prompt": "...", ...}``

- ``template``: the expression template (any person); ``identity``: reference image(s) or embedding(s) of the target's
  person; ``target``: the image the model learns to produce. Round 0 uses same-identity pairs (template and target are
  two images of one person); IDI rounds use cross-identity triplets. Extra keys (scores, ids) are kept as ``meta``.
- Relative paths are relative to the manifest's folder, so a data folder can be moved as a whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError


@dataclass
class Triplet:
    template: str
    identity: list[str]
    target: str
    prompt: str = ""
    meta: dict = field(default_factory=dict)

    def to_json(self, root: Path | None = None) -> str:
        d = asdict(self)
        if root is not None:
            rel = lambda p: os.path.relpath(os.path.abspath(p), root)  # noqa: E731
            d["template"], d["target"] = rel(d["template"]), rel(d["target"])
            d["identity"] = [rel(p) for p in d["identity"]]
        meta = d.pop("meta")
        return json.dumps({**d, **meta}, sort_keys=True)


def read_jsonl(path: str | os.PathLike, what: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-empty line, with one-line errors naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{what} '{path}' line {n} is not valid JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise InputError(f"{what} '{path}' line {n} is not a JSON object")
        missing = [k for k in required if k not in d]
        if missing:
            raise InputError(f"{what} '{path}' line {n} lacks {', '.join(missing)}")
        yield n, d


def write_jsonl(path: str | os.PathLike, lines: list[str]) -> None:
    """Write JSON lines atomically (temp file + rename): readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)


def read_manifest(path: str | os.PathLike) -> list[Triplet]:
    """Read a triplet manifest, resolving relative paths against its folder."""
    path = Path(path)
    root = path.parent
    out: list[Triplet] = []
    for _, d in read_jsonl(path, "manifest", ("template", "identity", "target")):
        ident = d.pop("identity")
        ident = [ident] if isinstance(ident, str) else list(ident)
        resolve = lambda p: str(p) if os.path.isabs(p) else str(root / p)  # noqa: E731
        out.append(
            Triplet(
                template=resolve(d.pop("template")),
                identity=[resolve(p) for p in ident],
                target=resolve(d.pop("target")),
                prompt=d.pop("prompt", ""),
                meta=d,
            )
        )
    if not out:
        raise InputError(f"manifest '{path}' holds no triplets")
    return out


def write_manifest(path: str | os.PathLike, triplets: list[Triplet]) -> None:
    """Write atomically, with paths relative to the manifest's folder."""
    root = Path(path).parent.resolve()
    write_jsonl(path, [t.to_json(root) for t in triplets])
