"""Training data: triplet manifests and the dataset that serves them with cached encodings."""

from .manifest import Triplet, read_manifest, write_manifest

__all__ = ["Triplet", "read_manifest", "write_manifest"]
