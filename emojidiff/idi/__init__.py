"""ID-irrelevant Data Iteration (IDI): cross-identity triplets for stage-1 training (DESIGN.md §2).

For a template T (person A, expression e) and another identity B, the current model makes
G = model(identity B, template T, random prompt); an identity-alteration backend then makes G' in which only B's
identity remains; a triplet (T, reference of B, G') is kept when G' passes the filters (expression close to T's,
identity close to B and far from A). Each round trains the next model on the kept triplets.

**Source manifests** (``--templates`` and ``--identities``): JSON lines, one image per line::

    {"image": "faces/a_smile.png", "person": "A", "prompt": "a photo of a man", "style": "photo"}

- ``image`` (required): an RGB face image. Relative paths are relative to the manifest's folder.
- ``person`` (required): any string naming the person in the image. Templates are paired only with identities of
  *other* persons; the leakage filter scores G' against the template image itself.
- ``style`` (optional): fills ``{style}`` in the IDI config's ``prompts`` (generation prompts are drawn from that
  list per candidate); ``prompt`` (optional): the template's prompt for ``emojidiff probe-layers``.
- Any other keys are ignored.

The same file may serve as both manifests. **Output** (``--out DIR``): ``round-<r>/`` per round with
``triplets.jsonl`` (kept triplets, the training manifest format of :mod:`emojidiff.data.manifest`, every score in
its extra keys), ``candidates.jsonl`` (every candidate, kept or not, with its scores and rejection reasons),
``report.json`` / ``report.md`` / ``histograms.png``, ``images/`` (the targets G'), ``shards/`` (the per-process
journals the run resumes from) and ``train/`` (the next model; its ``adapter/`` feeds the next round).
"""

from .config import IDIConfig
from .filters import Scores, filter_reasons
from .sources import SourceImage, read_sources

__all__ = ["IDIConfig", "Scores", "SourceImage", "filter_reasons", "read_sources"]
