"""The CLI end to end on tiny pipelines."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from emojidiff.cli import main

GEN = ["--steps", "2", "--height", "64", "--width", "64"]


@pytest.fixture(scope="module")
def cli_adapter(tmp_path_factory, sd_base, encoder_dir):
    out = tmp_path_factory.mktemp("cli") / "adapter"
    res = CliRunner().invoke(
        main,
        [
            "init-adapter",
            "--base",
            sd_base,
            "--out",
            str(out),
            "--image-encoder",
            encoder_dir,
            "--expression-layers",
            "up",
            "--identity-dim",
            "16",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "sd15 adapter" in res.output and "3/6 blocks" in res.output
    return str(out)


def _generate(args):
    return CliRunner().invoke(main, ["generate", *args])


def test_generate_is_byte_identical_for_the_same_seed(cli_adapter, files):
    out = files["dir"]
    common = ["--identity", files["embedding"], "--expression", files["template"], "--adapter", cli_adapter, *GEN]
    for name, seed in (("a.png", "5"), ("b.png", "5"), ("c.png", "6")):
        res = _generate([*common, "--seed", seed, "--out", str(out / name)])
        assert res.exit_code == 0, res.output
    a, b, c = ((out / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a == b and a != c


def test_generate_uses_the_base_recorded_in_the_adapter_and_numbers_several_images(cli_adapter, files):
    from PIL import Image

    out = files["dir"] / "many.png"
    res = _generate(
        [
            "--identity",
            files["embedding"],
            "--identity",
            files["embedding"],
            "--expression",
            files["template"],
            "--adapter",
            cli_adapter,
            "--num-images",
            "2",
            "--out",
            str(out),
            *GEN,
        ]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in files["dir"].glob("many*")) == ["many_0.png", "many_1.png"]
    assert Image.open(files["dir"] / "many_0.png").size == (64, 64)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--identity": "missing.npy"}, "identity embedding 'missing.npy' does not exist"),
        ({"--expression": "missing.png"}, "expression template 'missing.png' does not exist"),
        ({"--identity": "bad.npy"}, r"has shape \(1, 3\), but this adapter expects \(16,\)"),
        ({"--identity": "{template}"}, "needs a face recogniser, and face backend 'none' has none"),
        ({"--face-backend": "nope"}, "unknown face backend 'nope'"),
        ({"--adapter": "no-such-adapter"}, "adapter 'no-such-adapter' not found"),
        ({"--expression": "{dir}"}, "is a directory"),
        ({"--expression": "notimage.png"}, "is not an image file"),
        ({"--height": "60"}, "--height must be a multiple of 8"),
    ],
)
def test_generate_errors_are_one_line(cli_adapter, files, change, message, monkeypatch):
    monkeypatch.chdir(files["dir"])
    np.save(files["dir"] / "bad.npy", np.ones(3, np.float32))
    (files["dir"] / "notimage.png").write_text("nope")
    opts = {
        "--identity": files["embedding"],
        "--expression": files["template"],
        "--adapter": cli_adapter,
        "--out": "x.png",
    }
    opts.update({k: v.format(template=files["template"], dir=files["dir"]) for k, v in change.items()})
    res = _generate(GEN + [x for kv in opts.items() for x in kv])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (files["dir"] / "x.png").exists()


def test_init_adapter_errors(tmp_path, sd_base, sdxl_base, encoder_dir):
    res = CliRunner().invoke(
        main,
        [
            "init-adapter",
            "--base",
            sd_base,
            "--out",
            str(tmp_path / "a"),
            "--image-encoder",
            encoder_dir,
            "--expression-layers",
            "up.block_9",
        ],
    )
    assert res.exit_code == 1 and "expression layer 'up.block_9' does not exist" in res.stderr
    res = CliRunner().invoke(
        main,
        [
            "init-adapter",
            "--base",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "b"),
            "--image-encoder",
            encoder_dir,
        ],
    )
    assert res.exit_code == 1 and "base model" in res.stderr and "could not be read" in res.stderr


def test_incompatible_adapter_from_the_cli(cli_adapter, sdxl_base, files):
    res = _generate(
        [
            "--identity",
            files["embedding"],
            "--expression",
            files["template"],
            "--adapter",
            cli_adapter,
            "--base",
            sdxl_base,
            "--out",
            str(files["dir"] / "x.png"),
            *GEN,
        ]
    )
    assert res.exit_code == 1
    assert "was made for an sd15 base" in res.stderr and "is an sdxl base" in res.stderr


def test_console_entry_point_prints_no_traceback(tmp_path, cli_adapter):
    np.save(tmp_path / "x.npy", np.ones(16, np.float32))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "emojidiff",
            "generate",
            "--identity",
            "x.npy",
            "--expression",
            "nope.png",
            "--adapter",
            cli_adapter,
            "--out",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: expression template 'nope.png' does not exist"


def test_help_explains_the_commands():
    res = CliRunner().invoke(main, ["--help"])
    assert "generate" in res.output and "init-adapter" in res.output
    res = CliRunner().invoke(main, ["generate", "--help"])
    assert "--exp-scale" in res.output and "byte-identical" in res.output


def test_adapter_on_a_retrained_base_warns_in_one_line(tmp_path, cli_adapter, sd_base, files):
    from emojidiff.testing import retrained_copy

    other = retrained_copy(sd_base, tmp_path / "retrained")
    np.save(tmp_path / "x.npy", np.ones(16, np.float32))
    args = ["generate", "--identity", "x.npy", "--expression", files["template"], "--adapter", cli_adapter]
    proc = subprocess.run(
        [sys.executable, "-m", "emojidiff", *args, "--base", str(other), "--out", "o.png", *GEN],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "another version of base" in line]
    assert len(warned) == 1 and warned[0].startswith(f"warning: adapter '{cli_adapter}' was trained on another")
    assert (tmp_path / "o.png").is_file()  # a warning, not an error: the image is still made
