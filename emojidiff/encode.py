"""From user inputs to what the branches need, without any diffusion model: identity embeddings and template crops.

Kept apart from the pipeline so the CLI can check every input (faces found, embedding shapes) before it spends time
loading a base model, and so the results feed the pipeline directly instead of being computed twice.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import AdapterError, InputError
from .faces import normalize_embeddings, select_face
from .faces.base import FaceAnalyzer
from .io import is_embedding_path, load_embedding, load_image

IdentityInput = str | Path | Image.Image | np.ndarray | torch.Tensor
TemplateInput = str | Path | Image.Image


class LRU(OrderedDict):
    """A small LRU cache, so repeated generations skip the face models and the image encoder."""

    def __init__(self, maxsize: int = 64):
        super().__init__()
        self.maxsize = maxsize

    def get_or(self, key, compute):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = compute()
        self[key] = value
        if len(self) > self.maxsize:
            self.popitem(last=False)
        return value


def image_key(img: Image.Image) -> str:
    """Content hash of an image's pixels (two copies of one picture share cache entries)."""
    h = hashlib.sha1(img.tobytes())
    h.update(f"{img.size}{img.mode}".encode())
    return h.hexdigest()


class FaceEncoder:
    """Identity embeddings and expression-template crops through one face backend, cached by pixel content."""

    def __init__(self, analyzer: FaceAnalyzer, identity_dim: int):
        self.analyzer = analyzer
        self.identity_dim = identity_dim
        self.cache = LRU()

    def identity(self, identity: IdentityInput | Sequence[IdentityInput], face_index: int | None = None) -> np.ndarray:
        """One embedding ``(identity_dim,)`` from images, ``.npy`` files or arrays, averaged + renormalised."""
        items = list(identity) if isinstance(identity, (list, tuple)) else [identity]
        if not items:
            raise InputError("no identity given")
        dim = self.identity_dim
        rows: list[np.ndarray] = []
        for item in items:
            if isinstance(item, torch.Tensor):
                item = item.detach().float().cpu().numpy()
            if isinstance(item, np.ndarray):
                arr = np.asarray(item, dtype=np.float32)
                arr = arr.reshape(-1, arr.shape[-1]) if arr.ndim else arr
                if arr.ndim != 2 or arr.shape[1] != dim:
                    raise InputError(
                        f"identity embedding has shape {tuple(item.shape)}, but this adapter expects ({dim},)"
                    )
                rows.append(arr)
            elif isinstance(item, (str, Path)) and is_embedding_path(item):
                rows.append(load_embedding(item, dim))
            else:
                img = load_image(item, "identity image") if isinstance(item, (str, Path)) else item
                what = f"identity image '{item}'" if isinstance(item, (str, Path)) else "the identity image"
                rows.append(self._from_image(img, what, face_index)[None])
        return normalize_embeddings(np.concatenate(rows, axis=0))

    def _from_image(self, img: Image.Image, what: str, face_index: int | None) -> np.ndarray:
        fa = self.analyzer

        def compute():
            face = select_face(fa.detect(img), what, face_index)
            emb = np.asarray(fa.identity_embedding(img, face), dtype=np.float32).reshape(-1)
            if emb.shape[0] != self.identity_dim:
                raise AdapterError(
                    f"face backend '{fa.name}' gives {emb.shape[0]}-d identity embeddings, but this adapter was made "
                    f"for {self.identity_dim}-d"
                )
            return emb

        return self.cache.get_or(("identity", image_key(img), fa.name, face_index), compute)

    def crop(self, template: TemplateInput, face_index: int | None = None) -> Image.Image:
        """The masked, aligned face crop of the template that the expression branch sees."""
        what = f"expression template '{template}'" if isinstance(template, (str, Path)) else "the expression template"
        img = load_image(template, "expression template") if isinstance(template, (str, Path)) else template

        def compute():
            face = select_face(self.analyzer.detect(img), what, face_index)
            return self.analyzer.expression_crop(img, face)

        return self.cache.get_or(("crop", image_key(img), self.analyzer.name, face_index), compute)
