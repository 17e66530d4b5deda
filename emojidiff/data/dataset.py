"""The training dataset: targets as pixels, templates and identities as cached encodings.

Template features (image encoder over the masked face crop) and identity embeddings are computed once and stored on
disk keyed by the file's content hash plus what encoded it, so epochs, resumed runs and later rounds reuse them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..io import is_embedding_path, load_image
from .manifest import Triplet


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class EncodingCache:
    """Content-addressed tensors on disk: ``root/<kind>/<sha256(file)>-<tag>.safetensors``."""

    def __init__(self, root: str | Path, tag: str):
        self.root = Path(root)
        self.tag = tag

    def get(self, kind: str, path: str, compute) -> torch.Tensor:
        f = self.root / kind / f"{file_hash(path)}-{self.tag}.safetensors"
        if f.is_file():
            return load_file(str(f))["value"]
        value = compute().detach().to("cpu", torch.float32).contiguous()
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f.name + ".tmp")
        save_file({"value": value}, str(tmp))
        tmp.replace(f)  # atomic: a killed run never leaves a half-written entry
        return value


def encoder_tag(pipe) -> str:
    """What the cached encodings depend on: image encoder weights/config, feature layer, face backend (and its
    weights, where the backend gives a ``fingerprint``: retrained analysers crop and embed differently), id dim."""
    cfg = pipe.config
    enc = pipe.image_encoder
    first = next(iter(enc.state_dict().values()))
    desc = f"{enc.config.to_json_string()}|{float(first.float().sum())}|{cfg.image_encoder_layer}|"
    desc += f"{pipe.face_analyzer.name}|{cfg.identity_dim}"
    fingerprint = getattr(pipe.face_analyzer, "fingerprint", None)
    if fingerprint:
        desc += f"|{fingerprint}"
    return hashlib.sha256(desc.encode()).hexdigest()[:16]


def target_pixels(path: str, resolution: int) -> torch.Tensor:
    """Target image -> (3, R, R) in [-1, 1]: shorter side resized to R, centre crop."""
    img = load_image(path, "target image")
    w, h = img.size
    s = resolution / min(w, h)
    img = img.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class TripletDataset(torch.utils.data.Dataset):
    """Serves ``(pixels, prompt, identity embedding, template features)`` for each triplet."""

    def __init__(self, triplets: list[Triplet], pipe, resolution: int, cache_dir: str | Path, show_progress=True):
        self.triplets = triplets
        self.resolution = resolution
        cache = EncodingCache(cache_dir, encoder_tag(pipe))
        self.identity: list[torch.Tensor] = []
        self.expression: list[torch.Tensor] = []
        for t in tqdm(triplets, desc="encoding templates and identities", disable=not show_progress):
            embs = [cache.get("identity", p, lambda p=p: torch.from_numpy(pipe.encode_identity(p))) for p in t.identity]
            # several references: average the unit embeddings and renormalise (as at inference)
            self.identity.append(torch.from_numpy(pipe.encode_identity([e.numpy() for e in embs])))
            self.expression.append(cache.get("expression", t.template, lambda t=t: pipe.encode_expression(t.template)))

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int) -> dict:
        t = self.triplets[i]
        return {
            "pixels": target_pixels(t.target, self.resolution),
            "prompt": t.prompt,
            "identity": self.identity[i],
            "expression": self.expression[i],
        }


def collate(items: list[dict]) -> dict:
    """Stack tensor fields, keep the others as lists (subclassed datasets may add fields, e.g. ICA's)."""
    out: dict = {}
    for k in items[0]:
        vals = [x[k] for x in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


__all__ = ["EncodingCache", "TripletDataset", "collate", "is_embedding_path", "target_pixels"]
