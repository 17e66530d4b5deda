"""Tiny SD1.5- and SDXL-shaped models built from configs and saved to a session temp dir (never from a hub)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from emojidiff.testing import TEST_ID_DIM as ID_DIM  # noqa: E402
from emojidiff.testing import random_embedding, random_image  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    from emojidiff.testing import tiny_image_encoder, tiny_sd_pipeline, tiny_sdxl_pipeline

    root = tmp_path_factory.mktemp("models")
    tiny_sd_pipeline().save_pretrained(root / "sd")
    tiny_sdxl_pipeline().save_pretrained(root / "sdxl")
    tiny_image_encoder().save_pretrained(root / "encoder")
    return root


@pytest.fixture(scope="session")
def sd_base(models_dir):
    return str(models_dir / "sd")


@pytest.fixture(scope="session")
def sdxl_base(models_dir):
    return str(models_dir / "sdxl")


@pytest.fixture(scope="session")
def encoder_dir(models_dir):
    return str(models_dir / "encoder")


def _make_adapter(base, out, encoder, layers, seed=0):
    from safetensors.torch import load_file

    from emojidiff.adapter import init_adapter
    from emojidiff.adapter.config import IDENTITY_WEIGHTS, EmojiDiffConfig
    from emojidiff.adapter.weights import save_branch_weights

    init_adapter(base, out, image_encoder=encoder, expression_layers=layers, identity_dim=ID_DIM, seed=seed)
    # An untrained adapter has zero expression weights outside the map. Make them random, so that tests of the
    # layer map check the per-block scales themselves rather than zeros.
    cfg = EmojiDiffConfig.load(out)
    id_sd = load_file(os.path.join(out, IDENTITY_WEIGHTS))
    exp_sd = load_file(os.path.join(out, "ip_adapter_expression.safetensors"))
    g = torch.Generator().manual_seed(seed + 1)
    for k, v in exp_sd.items():
        if k.startswith("ip_adapter."):
            exp_sd[k] = torch.randn(v.shape, generator=g) * 0.2
    save_branch_weights(out, id_sd, exp_sd)
    return out, cfg


@pytest.fixture(scope="session")
def make_adapter():
    """Factory: ``make_adapter(base, out, encoder, layers)`` -> adapter folder with random branch weights."""
    return lambda base, out, encoder, layers: _make_adapter(base, out, encoder, layers)[0]


@pytest.fixture(scope="session")
def sd_adapter(models_dir, sd_base, encoder_dir):
    return _make_adapter(sd_base, str(models_dir / "adapter_sd"), encoder_dir, "up.block_0.1,mid")[0]


@pytest.fixture(scope="session")
def sdxl_adapter(models_dir, sdxl_base, encoder_dir):
    return _make_adapter(sdxl_base, str(models_dir / "adapter_sdxl"), encoder_dir, "up.block_0.1,mid")[0]


@pytest.fixture(scope="session")
def sd_pipe(sd_base, sd_adapter):
    from emojidiff import EmojiDiffPipeline

    pipe = EmojiDiffPipeline.from_pretrained(sd_base, adapter=sd_adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def files(tmp_path):
    """A template image, an identity embedding and a few bad files on disk."""
    t = tmp_path / "template.png"
    random_image(1).save(t)
    e = tmp_path / "id.npy"
    np.save(e, random_embedding(0))
    return {"template": str(t), "embedding": str(e), "dir": tmp_path}
