"""Round-0 training data of the synthetic world and the bundled names (`synthetic` base, `synthetic-*` adapters)."""

import json

import pytest

from emojidiff.adapter import BUNDLED_ADAPTERS, BUNDLED_BASES, resolve_adapter, resolve_base
from emojidiff.data.manifest import read_manifest
from emojidiff.errors import AdapterError
from emojidiff.idi.sources import read_sources
from emojidiff.synthetic.factors import TEMPLATE_WORDS
from emojidiff.synthetic.pairs import write_round0


def test_round0_triplets_are_same_identity_self_reconstruction(tmp_path):
    s = write_round0(tmp_path, n_people=6, per_person=3, seed=1, n_val=2)
    assert (s.people, s.images) == (6, 18)
    renders = {
        json.loads(line)["file"]: json.loads(line) for line in (tmp_path / "renders.jsonl").read_text().splitlines()
    }
    triplets = read_manifest(tmp_path / "triplets.jsonl")
    assert len(triplets) == s.triplets == 4 * 3  # the first 2 people are held back for validation
    for t in triplets:
        rel = lambda p: str(p).split(str(tmp_path) + "/")[-1]  # noqa: E731
        assert t.template == t.target  # round 0: the template is the target itself
        tgt, ref = renders[rel(t.target)], renders[rel(t.identity[0])]
        assert rel(t.identity[0]) != rel(t.target) and ref["identity_id"] == tgt["identity_id"]
        words = set(t.prompt.replace(",", "").split())
        # the prompt names the style only: identity and expression must come from the branches
        assert not words & ({"hair", "eyes", "bald"} | set(TEMPLATE_WORDS.values()))
        assert tgt["style"]["background"] in words
    assert len(read_manifest(tmp_path / "val.jsonl")) == 2
    tpl, ids = read_sources(tmp_path / "templates.jsonl"), read_sources(tmp_path / "identities.jsonl")
    assert len(tpl) == len(ids) == 4 and {t.person for t in tpl} == {i.person for i in ids}
    assert not {t.image for t in tpl} & {i.image for i in ids}


def test_round0_is_deterministic(tmp_path):
    write_round0(tmp_path / "a", n_people=3, per_person=2, seed=5, n_val=0)
    write_round0(tmp_path / "b", n_people=3, per_person=2, seed=5, n_val=0)
    assert (tmp_path / "a/triplets.jsonl").read_text() == (tmp_path / "b/triplets.jsonl").read_text()
    assert (tmp_path / "a/images/0000003.png").read_bytes() == (tmp_path / "b/images/0000003.png").read_bytes()
    with pytest.raises(ValueError, match="per_person"):
        write_round0(tmp_path / "c", n_people=3, per_person=1)


def test_bundled_names(tmp_path, monkeypatch):
    assert resolve_base("synthetic") == str(BUNDLED_BASES["synthetic"])
    assert resolve_base("some/hub-id") == "some/hub-id"
    monkeypatch.setitem(BUNDLED_ADAPTERS, "synthetic-test", tmp_path / "missing")
    with pytest.raises(AdapterError, match="bundled adapter 'synthetic-test' is not in this installation"):
        resolve_adapter("synthetic-test")
    assert set(BUNDLED_ADAPTERS) >= {"synthetic-naive", "synthetic-idi", "synthetic-ica"}


def test_masked_face_crop_of_a_face_at_the_border():
    """Generated images can put a face half outside the frame: the crop pads instead of failing."""
    import numpy as np

    from emojidiff.synthetic.base_model import masked_face_crop

    img = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    inside = masked_face_crop(img, (20.0, 20.0, 44.0, 44.0))
    assert inside.shape == (64, 64, 3)
    edge = masked_face_crop(img, (-6.0, 40.0, 20.0, 70.0))
    assert edge.shape == (64, 64, 3) and np.isfinite(edge).all() and edge.max() > 0
