"""`emojidiff bench --quick` on the shipped synthetic world, with tiny settings and untrained adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from emojidiff.adapter import core
from emojidiff.cli import main
from emojidiff.eval import bench
from emojidiff.eval.synthetic import GenSettings

BASE = core.BUNDLED_BASES["synthetic"]
pytestmark = pytest.mark.skipif(not (BASE / "model_index.json").is_file(), reason="shipped base model absent")
KEYS = ("identity_only", "coarse_control", "naive", "idi", "ica")
METRICS = ("id_sim", "exp_err", "lms_err", "leakage", "style_leakage", "prompt_acc", "quality", "intensity_r")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> str:
    from emojidiff.adapter import init_adapter

    out = tmp_path_factory.mktemp("bench") / "adapter"
    init_adapter("synthetic", out, image_encoder=str(BASE / "image_encoder"), face_backend="synthetic")
    return str(out)


@pytest.fixture
def tiny(monkeypatch):
    settings = bench.BenchSettings(n_identities=2, n_templates=2, exp_scales=(0.0, 0.5, 1.0),
                                   gen=GenSettings(steps=2), n_grid=3)  # fmt: skip
    monkeypatch.setattr(bench, "QUICK", settings)
    return settings


def test_bench_quick_writes_results_grids_and_plot_and_skips_missing_adapters(untrained, tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(core.BUNDLED_ADAPTERS, "synthetic-naive", Path(untrained))
    monkeypatch.setitem(core.BUNDLED_ADAPTERS, "synthetic-idi", Path(untrained))
    monkeypatch.setitem(core.BUNDLED_ADAPTERS, "synthetic-ica", tmp_path / "not-installed")
    out = tmp_path / "bench"
    res = CliRunner().invoke(main, ["bench", "--world", "synthetic", "--quick", "--seed", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output + res.stderr
    data = json.loads((out / "results.json").read_text())
    assert list(data["methods"]) == list(KEYS) and data["seed"] == 3 and data["n_pairs"] == 4
    assert "not in this installation" in data["methods"]["ica"]["skipped"] and list(data["skipped"]) == ["ica"]
    assert "skipped ica" in res.stderr
    for key in KEYS[:-1]:
        m = data["methods"][key]
        assert set(METRICS) <= set(m) and not m.get("skipped")
        assert -1 <= m["id_sim"] <= 1 and 0 <= m["exp_err"] <= 1 and 0 <= m["prompt_acc"] <= 1
        assert 0 <= m["quality"] <= 1 and set(m["by_scale"]) == {"0.0", "0.5", "1.0"}
    assert data["methods"]["identity_only"]["intensity_r"] is None  # exp_scale plays no part
    assert data["timings"]["images"] == {"identity_only": 4, "coarse_control": 12, "naive": 12, "idi": 12}
    assert data["timings"]["s_per_image"]["idi"] > 0 and data["command"].startswith("emojidiff bench")
    md = (out / "results.md").read_text()
    assert "| idi |" in md and "| ica | skipped:" in md
    for name in ("grid_cases.png", "grid_scales.png", "tradeoff.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    assert set(data["files"]) >= {"results.json", "results.md", "grid_cases.png", "tradeoff.png"}


def test_bench_adapter_overrides_and_method_subset(untrained, tiny, tmp_path):
    out = tmp_path / "b"
    args = ["bench", "--quick", "--out", str(out), "--methods", "naive,ica", "--adapter", f"naive={untrained}",
            "--adapter", f"ica={untrained}", "--n-identities", "2", "--n-templates", "1"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + res.stderr
    data = json.loads((out / "results.json").read_text())
    assert list(data["methods"]) == ["naive", "ica"] and data["n_pairs"] == 2 and not data["skipped"]
    # the same adapter gives the same numbers under two names
    a, b = data["methods"]["naive"], data["methods"]["ica"]
    assert a["id_sim"] == pytest.approx(b["id_sim"], abs=1e-3) and a["exp_err"] == pytest.approx(b["exp_err"], abs=1e-3)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--world", "real"], "--world 'real' is not available"),
        (["--methods", "naive,bogus"], "unknown method(s) bogus"),
        (["--adapter", "bogus=/x"], "must be ROLE=DIR"),
    ],
)
def test_bench_errors_are_one_line(tmp_path, args, needle):
    res = CliRunner().invoke(main, ["bench", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
