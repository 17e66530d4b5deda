"""`emojidiff world pretrain --quick` end to end, resuming, and sampling the result with plain diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from emojidiff.cli import main
from emojidiff.synthetic.base_model import ANALYSERS_DIR


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("world")
    res = CliRunner().invoke(main, ["world", "pretrain", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "training in a second process" in res.output  # the default: analysers beside the other stages
    return out


def test_quick_pretrain_writes_every_stage(quick_run):
    state = json.loads((quick_run / "state.json").read_text())
    assert list(state["done"]) == ["analysers", "data", "vae", "decoder", "clip", "unet", "assemble"]
    for kind in ("train", "eval"):
        for f in ("identity.safetensors", "face.safetensors", "config.json"):
            assert (quick_run / "analysers" / kind / f).is_file()
    assert (quick_run / "analysers" / "eval" / "style.safetensors").is_file()
    assert list((quick_run / "checkpoints").glob("unet-*"))
    assert not list(quick_run.rglob("*.bin")) and not list(quick_run.rglob("*.pt"))


def test_quick_base_loads_in_plain_diffusers_and_samples(quick_run):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPVisionModelWithProjection

    pipe = StableDiffusionPipeline.from_pretrained(str(quick_run / "base"))
    assert pipe.tokenizer("a smiling person").input_ids[2] != pipe.tokenizer.unk_token_id
    assert isinstance(pipe.image_encoder, CLIPVisionModelWithProjection)
    img = pipe("a flat portrait of a smiling person", num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()


def test_resume_skips_finished_stages_and_refuses_to_overwrite(quick_run):
    runner = CliRunner()
    res = runner.invoke(main, ["world", "pretrain", "--quick", "--out", str(quick_run)])
    assert res.exit_code == 1 and "--resume" in res.output
    res = runner.invoke(main, ["world", "pretrain", "--quick", "--resume", "--out", str(quick_run)])
    assert res.exit_code == 0, res.output
    assert "already done" in res.output


def test_base_samples_with_v_prediction_on_a_zero_terminal_snr_schedule(quick_run):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_pretrained(str(quick_run / "base"), subfolder="scheduler")
    assert sched.config.prediction_type == "v_prediction" and sched.config.timestep_spacing == "trailing"
    assert float(sched.alphas_cumprod[-1]) < 1e-6  # x_T holds nothing of the image
    state = json.loads((quick_run / "state.json").read_text())
    assert state["done"]["unet"]["prediction_type"] == "v_prediction"


def test_decoder_stage_leaves_the_encoder_and_so_every_latent_unchanged(quick_run):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(quick_run / "vae"))
    crop_trained = AutoencoderKL.from_pretrained(sorted((quick_run / "checkpoints").glob("vae-*"))[-1])
    for name in ("encoder", "quant_conv"):
        kept = getattr(crop_trained, name).state_dict()
        for k, v in getattr(vae, name).state_dict().items():
            assert torch.equal(v, kept[k]), k
    assert not torch.equal(vae.decoder.conv_out.weight, crop_trained.decoder.conv_out.weight)


def test_resume_with_more_unet_steps_continues_the_unet_and_assembles_again(tmp_path):
    runner = CliRunner()
    out = tmp_path / "w"
    args = ["world", "pretrain", "--quick", "--out", str(out), "--stages", "data,vae,clip,unet,assemble"]
    assert runner.invoke(main, args).exit_code == 0
    first = (out / "base" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    res = runner.invoke(main, [*args, "--resume", "--stages", "unet,assemble", "--unet-steps", "5"])
    assert res.exit_code == 0, res.output
    assert "continuing to 5 UNet steps (was 3)" in res.output and "resuming from unet-3" in res.output
    state = json.loads((out / "state.json").read_text())
    assert state["done"]["unet"]["steps"] == 5
    assert (out / "base" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != first


def test_two_processes_sharing_a_run_folder_keep_each_others_stages(tmp_path):
    from emojidiff.synthetic.pretrain import _State

    a, b = _State(tmp_path), _State(tmp_path)  # both loaded before either finished a stage
    a.finish("analysers", {"seconds": 1})
    b.finish("data", {"seconds": 2})
    a.finish("vae", {"seconds": 3})
    assert list(_State(tmp_path).data["done"]) == ["analysers", "data", "vae"]


def test_the_lent_thread_comes_back_when_the_analysers_process_ends():
    from types import SimpleNamespace

    from emojidiff.synthetic.pretrain import _Side

    before = torch.get_num_threads()
    proc, said = SimpleNamespace(exitcode=None), []
    torch.set_num_threads(1)
    side = _Side(proc, 2, said.append)
    try:
        side.poll()
        assert torch.get_num_threads() == 1 and not said  # still running: keep one thread
        proc.exitcode = 0
        side.poll()
        assert torch.get_num_threads() == 2 and said == ["[analysers] process ended (exit code 0); back to 2 threads"]
        side.poll()
        assert len(said) == 1
    finally:
        torch.set_num_threads(before)


def test_sequential_run_trains_every_stage_in_one_process(tmp_path):
    out = tmp_path / "w"
    res = CliRunner().invoke(main, ["world", "pretrain", "--quick", "--sequential", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "second process" not in res.output
    assert list(json.loads((out / "state.json").read_text())["done"]) == [
        "analysers",
        "data",
        "vae",
        "decoder",
        "clip",
        "unet",
        "assemble",
    ]


def test_failed_analyser_process_keeps_the_other_stages_and_says_how_to_rerun(tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "analysers").write_text("a file where the analysers' folder should be")
    res = CliRunner().invoke(main, ["world", "pretrain", "--quick", "--out", str(out)])
    assert res.exit_code == 1
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: the analysers process failed") and "--resume --stages analysers" in last
    done = json.loads((out / "state.json").read_text())["done"]
    assert "analysers" not in done and {"data", "vae", "decoder", "clip", "unet", "assemble"} <= set(done)
    assert (out / "base" / "model_index.json").is_file()


def test_sample_command(quick_run, tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "world",
            "sample",
            "--prompt",
            "a sketch portrait",
            "--n",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path),
            "--base",
            str(quick_run / "base"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_unknown_stage_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["world", "pretrain", "--quick", "--out", str(tmp_path), "--stages", "vae,zzz"])
    assert res.exit_code == 1 and "zzz" in res.output


def test_part_weight_maps_peak_on_the_eyes_and_mouth_and_keep_the_loss_scale(tmp_path):
    from emojidiff.synthetic.dataset import TRAIN_IDS, sample_portraits
    from emojidiff.synthetic.pretrain import PretrainConfig, _run_portraits, part_weight_maps
    from emojidiff.synthetic.render import face_geometry

    cfg = PretrainConfig(n_images=6, part_weight=4.0)
    portraits = sample_portraits(cfg.n_images, cfg.seed + 1000, TRAIN_IDS)
    w = part_weight_maps(_run_portraits(tmp_path, cfg, [p.caption() for p in portraits]), 16, cfg.part_weight)
    assert w.shape == (6, 1, 16, 16)
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(6), atol=1e-5)
    for k, p in enumerate(portraits):
        lmk = face_geometry(p, 64)["landmarks"] / 4  # latent cells of 4 px
        mouth = ((lmk[3] + lmk[4]) / 2).astype(int)
        corner = w[k, 0, 0, 0]
        for x, y in (lmk[0].astype(int), lmk[1].astype(int), mouth):
            assert w[k, 0, y, x] > 2.5 * corner  # eyes and mouth weigh far more than the background
    with pytest.raises(RuntimeError, match="not drawn with this run's seed"):
        _run_portraits(tmp_path, cfg, ["another caption"] * 6)


def test_expression_loss_prefers_each_renders_own_expression_and_reaches_the_latents(tmp_path):
    from diffusers import AutoencoderKL

    from emojidiff.synthetic.base_model import BASE_DIR
    from emojidiff.synthetic.dataset import TRAIN_IDS, sample_portraits
    from emojidiff.synthetic.pretrain import PretrainConfig, _ExpressionLoss, _to_unit
    from emojidiff.synthetic.render import render_array

    torch.manual_seed(0)
    cfg = PretrainConfig(n_images=12, expression_weight=1.0, expression_analysers=str(ANALYSERS_DIR / "train"))
    portraits = sample_portraits(cfg.n_images, cfg.seed + 1000, TRAIN_IDS)
    vae = AutoencoderKL.from_pretrained(BASE_DIR / "vae")
    images = (render_array(portraits, 64) * 255).round().astype(np.uint8)
    with torch.no_grad():
        latents = vae.encode(_to_unit(images)).latent_dist.mean * vae.config.scaling_factor
    reader = _ExpressionLoss(tmp_path, cfg, vae, portraits)
    idx = torch.arange(cfg.n_images)
    z = latents.clone().requires_grad_(True)
    own = reader(z, idx)
    shuffled = reader(latents.roll(1, 0), idx)
    assert own.shape == (12,) and own.mean() < 0.5 * shuffled.mean()
    own.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in vae.parameters())


def test_expression_loss_refuses_the_evaluation_analysers(tmp_path):
    from emojidiff.errors import InputError
    from emojidiff.synthetic.pretrain import PretrainConfig, _ExpressionLoss

    cfg = PretrainConfig(n_images=2, expression_weight=1.0, expression_analysers=str(ANALYSERS_DIR / "eval"))
    with pytest.raises(InputError, match="evaluation analysers"):
        _ExpressionLoss(tmp_path, cfg, None, [])


def test_unet_options_train_and_are_recorded(tmp_path):
    out = tmp_path / "w"
    args = ["world", "pretrain", "--quick", "--out", str(out), "--stages", "data,vae,clip,unet", "--part-weight", "3",
            "--attention-at-full-res", "--glasses-share", "0.5"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    state = json.loads((out / "state.json").read_text())
    assert state["done"]["unet"]["part_weight"] == 3.0 and state["done"]["unet"]["glasses_share"] == 0.5
    assert state["done"]["unet"]["expression_weight"] == 0.0 and "final_expression_loss" not in state["done"]["unet"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["part_weight"] == 3.0 and cfg["unet_attention_at_full_res"] is True
    unet = json.loads((out / "unet" / "config.json").read_text())
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3
    assert unet["up_block_types"] == ["CrossAttnUpBlock2D"] * 3


def test_unet_batches_draw_the_asked_share_of_glasses_and_stay_uniform_by_default():
    import numpy as np

    from emojidiff.synthetic.pretrain import unet_batch_indices

    wearing = np.arange(0, 100, 10)  # 10 of 100 renders wear glasses
    idx = unet_batch_indices(np.random.default_rng(0), 100, 16, wearing, 0.5)
    assert len(idx) == 16 and len(set(idx.tolist())) == 16
    assert np.isin(idx, wearing).sum() == 8
    assert np.isin(unet_batch_indices(np.random.default_rng(0), 100, 16, wearing, 1.0), wearing).sum() == 10  # all
    uniform = unet_batch_indices(np.random.default_rng(3), 100, 16, wearing, 0.0)
    assert np.array_equal(uniform, np.random.default_rng(3).choice(100, 16, replace=False))


def test_the_analysers_process_stops_once_its_parent_is_gone():
    import os

    from emojidiff.synthetic.pretrain import watch_parent

    called = []
    watch_parent(os.getppid() + 1, lambda: called.append(True), interval=0.01)  # "parent" already not ours
    assert called == [True]


def test_the_analysers_process_ends_when_the_pretraining_process_is_killed(tmp_path):
    """SIGKILL the main process of a parallel run while its analysers' process trains: that one goes too."""
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys, time\n"
        "from emojidiff.synthetic import pretrain as p\n"
        "cfg = p.PretrainConfig.quick(); cfg.analyser_identity_steps = cfg.analyser_face_steps = 100000\n"
        "proc = p._start_side_analysers(__import__('pathlib').Path(sys.argv[1]), cfg, lambda m: None)\n"
        "print(proc.pid, flush=True); time.sleep(600)\n"
    )
    main_proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    if not select.select([main_proc.stdout], [], [], 120)[0]:  # never hang the suite on a stuck start
        main_proc.kill()
        raise AssertionError("the pretraining process did not start its analysers' process in 2 minutes")
    child = int(main_proc.stdout.readline().split()[-1])
    os.kill(main_proc.pid, signal.SIGKILL)
    main_proc.wait()
    for _ in range(300):  # the watch polls every 2 s; allow a slow machine a minute
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if open(f"/proc/{child}/stat").read().split()[2] == "Z":  # exited, waiting to be reaped by init
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the analysers' process outlived the killed pretraining process")


def test_resume_keeps_the_runs_unet_options_unless_given_again(tmp_path):
    out = tmp_path / "w"
    runner = CliRunner()
    args = ["world", "pretrain", "--quick", "--out", str(out), "--stages", "data,vae,clip,unet"]
    assert runner.invoke(main, [*args, "--part-weight", "3"]).exit_code == 0
    res = runner.invoke(main, [*args, "--resume", "--stages", "unet", "--unet-steps", "5"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "state.json").read_text())["done"]["unet"]["part_weight"] == 3.0
    res = runner.invoke(main, [*args, "--resume", "--stages", "unet", "--unet-steps", "7", "--part-weight", "0"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "state.json").read_text())["done"]["unet"]["part_weight"] == 0.0


def test_expression_weight_trains_is_recorded_and_kept_on_resume(tmp_path):
    out = tmp_path / "w"
    runner = CliRunner()
    args = ["world", "pretrain", "--quick", "--out", str(out), "--stages", "data,vae,clip,unet"]
    train = str(ANALYSERS_DIR / "train")
    res = runner.invoke(main, [*args, "--expression-weight", "2", "--expression-analysers", train])
    assert res.exit_code == 0, res.output
    unet = json.loads((out / "state.json").read_text())["done"]["unet"]
    assert unet["expression_weight"] == 2.0 and np.isfinite(unet["final_expression_loss"])
    res = runner.invoke(main, [*args, "--resume", "--stages", "unet", "--unet-steps", "5"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["expression_weight"] == 2.0 and cfg["expression_analysers"] == train


def test_default_unet_has_no_attention_at_full_resolution():
    from emojidiff.synthetic.base_model import make_unet

    unet = make_unet()
    assert unet.config.down_block_types[0] == "DownBlock2D" and unet.config.up_block_types[-1] == "UpBlock2D"


def test_unet_captions_name_template_expressions_alone_and_leave_uniform_ones_unnamed(tmp_path):
    from emojidiff.synthetic.dataset import sample_portraits
    from emojidiff.synthetic.factors import NAMED_DISTANCE, caption, expression_caption, template_distance
    from emojidiff.synthetic.pretrain import PretrainConfig, _UNetCaptions
    from emojidiff.synthetic.tokenizer import world_tokenizer

    tok = world_tokenizer()
    portraits = sample_portraits(40, seed=7)
    named = [template_distance(p.expression) < NAMED_DISTANCE for p in portraits]
    assert 0 < sum(named) < len(portraits)
    data = [p.caption() for p in portraits]
    idx, gen = torch.arange(len(portraits)), torch.Generator().manual_seed(0)

    def ids(texts):
        return tok(texts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids

    plain, _ = _UNetCaptions(tok, data, None, PretrainConfig(caption_dropout=0.0))(idx, gen)
    assert torch.equal(plain, ids(data))
    every = _UNetCaptions(tok, data, portraits, PretrainConfig(caption_dropout=0.0, expression_captions=1.0))
    inp, drop = every(idx, gen)
    assert not drop.any()
    for row, p, n in zip(inp, portraits, named, strict=True):
        want = expression_caption(p.expression) if n else caption(p.identity, p.expression, p.style, False)
        assert torch.equal(row, ids([want])[0])
    half = _UNetCaptions(tok, data, portraits, PretrainConfig(caption_dropout=0.5, expression_captions=0.5))
    inp, drop = half(idx, gen)
    short = [torch.equal(r, ids([expression_caption(p.expression)])[0]) for r, p in zip(inp, portraits, strict=True)]
    assert 0 < sum(short) < sum(named) and 0 < drop.sum() < len(idx)
    assert torch.equal(inp[drop], ids([""]).expand(int(drop.sum()), -1))


def test_expression_captions_train_are_recorded_and_kept_on_resume(tmp_path):
    out = tmp_path / "w"
    runner = CliRunner()
    args = ["world", "pretrain", "--quick", "--out", str(out), "--stages", "data,vae,clip,unet"]
    res = runner.invoke(main, [*args, "--expression-captions", "0.5"])
    assert res.exit_code == 0, res.output
    assert "renders named by them" in res.output
    assert json.loads((out / "state.json").read_text())["done"]["unet"]["expression_captions"] == 0.5
    res = runner.invoke(main, [*args, "--resume", "--stages", "unet", "--unet-steps", "5"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["expression_captions"] == 0.5
    res = runner.invoke(main, [*args, "--expression-captions", "1.5"])
    assert res.exit_code != 0 and "1.5" in res.output


def test_style_swapped_changes_exactly_the_named_caption_word():
    from emojidiff.synthetic.factors import CAPTIONED_STYLE_FIELDS, Style, style_swapped

    rng = np.random.default_rng(0)
    style = Style(background="blue", shading="flat", palette="natural", glasses="round", hat="red")
    for name in CAPTIONED_STYLE_FIELDS:
        for _ in range(20):
            other = style_swapped(style, name, rng)
            changed = [f for f in CAPTIONED_STYLE_FIELDS if getattr(other, f) != getattr(style, f)]
            assert changed == [name]
    assert style_swapped(style, "glasses", rng).glasses == "square"  # glasses worn change shape
    bare = {style_swapped(Style(glasses="none"), "glasses", rng).glasses for _ in range(50)}
    assert bare == {"round", "square"}


def test_contrastive_loss_counts_hard_negatives_as_wrong_answers_only():
    from emojidiff.synthetic.pretrain import _contrastive_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 4)
    plain = torch.nn.functional.cross_entropy
    target = torch.arange(4)
    assert torch.allclose(_contrastive_loss(logits), (plain(logits, target) + plain(logits.T, target)) / 2)
    # a hard negative that every image prefers to its own caption raises the loss; one none prefers barely does
    worse = _contrastive_loss(torch.cat([logits, torch.full((4, 1), 10.0)], 1))
    harmless = _contrastive_loss(torch.cat([logits, torch.full((4, 1), -10.0)], 1))
    assert worse > _contrastive_loss(logits) + 4  # only the image-to-text half sees it
    assert abs(harmless - _contrastive_loss(logits)) < 1e-3


def test_clip_hard_negatives_train_and_report_style_swap_accuracy(tmp_path):
    out = tmp_path / "w"
    args = ["world", "pretrain", "--quick", "--out", str(out), "--stages", "data,clip", "--clip-hard-negatives", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    clip = json.loads((out / "state.json").read_text())["done"]["clip"]
    assert clip["hard_negatives"] == 1.0
    assert set(clip["style_swap_accuracy"]) >= {"background", "shading", "palette", "glasses", "hat"}
    assert all(0.0 <= v <= 1.0 for v in clip["style_swap_accuracy"].values())
    assert json.loads((out / "config.json").read_text())["clip_hard_negatives"] == 1.0
    res = CliRunner().invoke(main, [*args[:5], "--resume", "--stages", "vae"])  # resuming keeps the run's choice
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["clip_hard_negatives"] == 1.0


def test_resume_keeps_every_option_the_run_began_with_unless_given_again(tmp_path):
    out = tmp_path / "w"
    runner = CliRunner()
    args = ["world", "pretrain", "--quick", "--out", str(out), "--stages", "data"]
    first = ["--seed", "3", "--clip-steps", "4", "--n-images", "40", "--style-steps", "5"]
    assert runner.invoke(main, [*args, *first]).exit_code == 0
    res = runner.invoke(main, [*args, "--resume", "--stages", "data,vae", "--vae-steps", "3"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["seed"], cfg["clip_steps"], cfg["n_images"], cfg["vae_steps"], cfg["style_steps"]) == (3, 4, 40, 3, 5)
    assert json.loads((out / "state.json").read_text())["done"]["data"]["n_images"] == 40
