"""Every bad input gives one clear sentence naming the input and the problem."""

import json
import shutil

import numpy as np
import pytest

from emojidiff import EmojiDiffPipeline
from emojidiff.adapter import EmojiDiffConfig, meta_unet
from emojidiff.adapter.core import read_unet_config
from emojidiff.errors import AdapterError, FaceBackendError, InputError
from emojidiff.io import load_embedding, load_image
from emojidiff.testing import TEST_ID_DIM, random_image


def test_sd15_adapter_into_sdxl_base_fails_before_any_weight_is_loaded(sdxl_base, sd_adapter, monkeypatch):
    import diffusers

    def boom(*a, **k):
        raise AssertionError("weights were loaded before the compatibility check")

    monkeypatch.setattr(diffusers.AutoPipelineForText2Image, "from_pretrained", boom)
    with pytest.raises(AdapterError) as e:
        EmojiDiffPipeline.from_pretrained(sdxl_base, adapter=sd_adapter)
    msg = str(e.value)
    assert "\n" not in msg
    assert sd_adapter in msg and sdxl_base in msg
    assert "made for an sd15 base (cross-attention dim 32" in msg and "is an sdxl base (cross-attention dim 64" in msg


def test_adapter_into_an_already_built_pipeline_of_another_family(sdxl_base, sd_adapter):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_base)
    with pytest.raises(AdapterError, match="made for an sd15 base.*is an sdxl base"):
        EmojiDiffPipeline.from_pipe(pipe, sd_adapter)
    assert not hasattr(pipe.unet, "encoder_hid_proj") or pipe.unet.encoder_hid_proj is None  # untouched


def test_same_family_other_dimensions(sd_base, sd_adapter):
    cfg = EmojiDiffConfig.load(sd_adapter)
    other = read_unet_config(sd_base)
    other["cross_attention_dim"] = 48
    with pytest.raises(AdapterError, match="cross-attention dim 32.*cross-attention dim 48"):
        cfg.check_compatible(meta_unet(other), sd_adapter, "other-sd")


def test_image_encoder_of_the_wrong_width(tmp_path, sd_base, sd_adapter):
    shutil.copytree(sd_adapter, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "emojidiff.json").read_text())
    cfg["expression_embed_dim"] = 1280
    (tmp_path / "a" / "emojidiff.json").write_text(json.dumps(cfg))
    with pytest.raises(
        AdapterError, match="gives 32-d features, but the adapter's expression branch was made for 1280"
    ):
        EmojiDiffPipeline.from_pretrained(sd_base, adapter=tmp_path / "a")


def test_unknown_adapter_and_base(tmp_path, sd_base, sd_adapter):
    with pytest.raises(AdapterError, match="adapter 'nowhere' not found"):
        EmojiDiffPipeline.from_pretrained(sd_base, adapter="nowhere")
    with pytest.raises(AdapterError, match=f"base model '{tmp_path}' could not be read"):
        EmojiDiffPipeline.from_pretrained(str(tmp_path), adapter=sd_adapter)


def test_bad_embeddings(tmp_path, sd_pipe):
    cases = {
        "shape.npy": (np.zeros((3, 7), np.float32), r"has shape \(3, 7\), but this adapter expects \(16,\)"),
        "zero.npy": (np.zeros(TEST_ID_DIM, np.float32), "all-zero embedding"),
        "nan.npy": (np.full(TEST_ID_DIM, np.nan, np.float32), "NaN"),
        "text.npy": (np.array(["a"] * TEST_ID_DIM), "not numbers"),
    }
    for name, (arr, match) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(InputError, match=match):
            load_embedding(tmp_path / name, TEST_ID_DIM)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a readable .npy array"):
        load_embedding(tmp_path / "obj.npy", TEST_ID_DIM)  # pickles are never loaded
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(InputError, match="'.*junk.npy' is not a readable .npy array"):
        sd_pipe.encode_identity(str(tmp_path / "junk.npy"))
    with pytest.raises(InputError, match=r"shape \(5,\), but this adapter expects \(16,\)"):
        sd_pipe.encode_identity(np.ones(5, np.float32))


def test_bad_image_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, I am not a picture")
    good = tmp_path / "good.png"
    random_image(0, 64).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:200])
    for name, match in [
        ("missing.png", "does not exist"),
        ("empty.png", "empty"),
        ("text.png", "not an image file"),
        ("truncated.png", "corrupt or truncated"),
    ]:
        with pytest.raises(InputError, match=match) as e:
            load_image(tmp_path / name, "expression template")
        assert str(e.value).startswith(f"expression template '{tmp_path / name}'")
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)


def test_backend_errors(sd_pipe):
    from emojidiff.faces import get_face_analyzer

    with pytest.raises(FaceBackendError, match="unknown face backend 'nope': available backends are .*none"):
        get_face_analyzer("nope")
    with pytest.raises(FaceBackendError, match="'none' face backend cannot compute identity embeddings"):
        sd_pipe.encode_identity(random_image(0))
