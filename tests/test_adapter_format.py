import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emojidiff.adapter import EXPRESSION_WEIGHTS, IDENTITY_WEIGHTS, EmojiDiffConfig, init_adapter
from emojidiff.adapter.weights import branch_weights_from_unet, check_weight_files
from emojidiff.errors import AdapterError
from emojidiff.testing import TEST_ID_DIM as ID_DIM


@pytest.fixture(scope="module")
def fresh_adapter(tmp_path_factory, sd_base, encoder_dir):
    out = tmp_path_factory.mktemp("fresh") / "adapter"
    init_adapter(sd_base, out, image_encoder=encoder_dir, expression_layers="up.block_0.1", identity_dim=ID_DIM)
    return out


def test_folder_layout_and_config(fresh_adapter):
    names = sorted(p.name for p in Path(fresh_adapter).iterdir())
    assert names == [
        "emojidiff.json",
        "image_encoder",
        "ip_adapter_expression.safetensors",
        "ip_adapter_identity.safetensors",
    ]
    cfg = json.loads((Path(fresh_adapter) / "emojidiff.json").read_text())
    assert cfg["base_family"] == "sd15"
    assert cfg["cross_attention_dim"] == 32
    assert cfg["identity_dim"] == ID_DIM and cfg["identity_tokens"] == 4
    assert cfg["expression_layers"] == ["up.block_0.1"]
    assert cfg["expression_embed_dim"] == 32  # the tiny CLIP's hidden size
    assert cfg["image_encoder"] == {"path": "image_encoder", "subfolder": None}
    assert "version" in " ".join(cfg)


def test_untrained_expression_weights_are_zero_outside_the_map(fresh_adapter):
    exp = load_file(Path(fresh_adapter) / EXPRESSION_WEIGHTS)
    ident = load_file(Path(fresh_adapter) / IDENTITY_WEIGHTS)
    # processor order: down.block_1.0, down.block_1.1, up.block_0.0, up.block_0.1, up.block_0.2, mid -> key ids 1..11
    for i, key_id in enumerate([1, 3, 5, 7, 9, 11]):
        k = exp[f"ip_adapter.{key_id}.to_k_ip.weight"]
        assert (k.abs().sum() > 0) == (i == 3), key_id
        assert ident[f"ip_adapter.{key_id}.to_k_ip.weight"].abs().sum() > 0


def test_weights_round_trip_through_stock_diffusers_loader(fresh_adapter, sd_base):
    """Files -> diffusers load_ip_adapter -> read back from the UNet -> identical tensors (key renaming is exact)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_base)
    pipe.load_ip_adapter(
        str(fresh_adapter), subfolder="", weight_name=[IDENTITY_WEIGHTS, EXPRESSION_WEIGHTS], image_encoder_folder=None
    )
    id_sd, exp_sd = branch_weights_from_unet(pipe.unet)
    for name, got in ((IDENTITY_WEIGHTS, id_sd), (EXPRESSION_WEIGHTS, exp_sd)):
        want = load_file(Path(fresh_adapter) / name)
        assert sorted(got) == sorted(want)
        for k in want:
            assert torch.equal(got[k], want[k]), k


def test_init_is_deterministic_by_seed(tmp_path, sd_base, encoder_dir):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 0), (b, 0), (c, 1)):
        init_adapter(sd_base, out, image_encoder=encoder_dir, identity_dim=ID_DIM, seed=seed)
    assert (a / EXPRESSION_WEIGHTS).read_bytes() == (b / EXPRESSION_WEIGHTS).read_bytes()
    assert (a / EXPRESSION_WEIGHTS).read_bytes() != (c / EXPRESSION_WEIGHTS).read_bytes()


def test_config_errors(tmp_path):
    with pytest.raises(AdapterError, match="not a folder"):
        EmojiDiffConfig.load(tmp_path / "missing")
    with pytest.raises(AdapterError, match="has no emojidiff.json"):
        EmojiDiffConfig.load(tmp_path)
    (tmp_path / "emojidiff.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        EmojiDiffConfig.load(tmp_path)
    (tmp_path / "emojidiff.json").write_text("{}")
    with pytest.raises(AdapterError, match="lacks base_family"):
        EmojiDiffConfig.load(tmp_path)


def test_newer_format_version_is_refused(tmp_path, fresh_adapter):
    shutil.copytree(fresh_adapter, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "emojidiff.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "a" / "emojidiff.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="format version 99.*upgrade"):
        EmojiDiffConfig.load(tmp_path / "a")


def test_weight_file_checks(tmp_path, fresh_adapter):
    shutil.copytree(fresh_adapter, tmp_path / "a")
    cfg = EmojiDiffConfig.load(tmp_path / "a")
    check_weight_files(tmp_path / "a", cfg)
    (tmp_path / "a" / EXPRESSION_WEIGHTS).write_bytes(b"garbage" * 10)
    with pytest.raises(AdapterError, match="not a readable safetensors file"):
        check_weight_files(tmp_path / "a", cfg)
    (tmp_path / "a" / EXPRESSION_WEIGHTS).unlink()
    with pytest.raises(AdapterError, match=f"missing {EXPRESSION_WEIGHTS}"):
        check_weight_files(tmp_path / "a", cfg)


@pytest.mark.parametrize("name, family, n_layers, n_blocks", [("SD15", "sd15", 16, 16), ("SDXL", "sdxl", 70, 11)])
def test_real_sd15_and_sdxl_layouts(name, family, n_layers, n_blocks):
    """The adapter config for the real architectures, built on the meta device (no memory, no download)."""
    from emojidiff import testing
    from emojidiff.adapter import make_config, meta_unet

    unet = meta_unet(getattr(testing, f"{name}_UNET_CONFIG"))
    cfg = make_config(unet, expression_embed_dim=1280, expression_layers="up.block_1,mid")
    assert cfg.base_family == family
    assert cfg.cross_attention_dim == {"sd15": 768, "sdxl": 2048}[family]
    assert len(cfg.hidden_sizes) == n_layers and len(cfg.attention_blocks) == n_blocks
    assert cfg.expression_layers == ["up.block_1.0", "up.block_1.1", "up.block_1.2", "mid"]
    assert cfg.expression_hidden_dim == {"sd15": 768, "sdxl": 1280}[family]


def test_adapter_on_another_version_of_its_base_warns(tmp_path, fresh_adapter, sd_base):
    import warnings

    from emojidiff import EmojiDiffPipeline
    from emojidiff.adapter.core import base_digest
    from emojidiff.errors import BaseMismatchWarning
    from emojidiff.testing import retrained_copy

    digest = EmojiDiffConfig.load(fresh_adapter).base_digest
    assert digest == base_digest(sd_base) and len(digest) == 16
    assert base_digest("someone/a-hub-model") is None  # nothing local to hash, and no download is tried
    other = retrained_copy(sd_base, tmp_path / "sd-retrained")  # same architecture, other weights
    assert base_digest(other) not in (None, digest)
    with pytest.warns(BaseMismatchWarning, match=f"trained on another version of base '{other}'.*{digest}"):
        EmojiDiffPipeline.from_pretrained(str(other), adapter=fresh_adapter)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseMismatchWarning)
        EmojiDiffPipeline.from_pretrained(sd_base, adapter=fresh_adapter)  # its own base: silent
