"""Training and evaluating the synthetic world's face analysers on renders made on the fly.

* identity: supervised-contrastive metric learning on P people x K portraits per batch (fresh people every
  step, random expression and style), so the embedding generalises to people never seen;
* face: presence (renders vs non-faces), box, landmarks, expression factors and landmark ratios, with random
  shifts, scales, blur and noise so that it also reads imperfect generated images.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .factors import (
    EXPRESSION_NAMES,
    EXPRESSION_RANGES,
    Identity,
    Portrait,
    Style,
    sample_expression,
    sample_expression_with_source,
)
from .nets import (
    EXPR_HI,
    EXPR_LO,
    INPUT_SIZE,
    OUT_BOX,
    OUT_EXPR,
    OUT_LMK,
    OUT_PRESENCE,
    OUT_RATIOS,
    PART_ARCHS,
    FaceNet,
    IdentityNet,
    saved_parts_arch,
)
from .render import RATIO_NAMES, face_geometry, render_array

#: Identity ranges of the two analyser sets (disjoint), and the held-out range used to evaluate both.
SPLITS = {"train": (0, 50_000), "eval": (50_000, 100_000)}
HELDOUT = (1_000_000, 1_100_000)
ARCH = {"train": "plain", "eval": "res"}
SEED = {"train": 0, "eval": 1}


@dataclass
class AnalyserTrainConfig:
    kind: str = "train"  # "train" or "eval" set
    identity_steps: int = 1500
    face_steps: int = 1500
    p_ids: int = 24
    k_per_id: int = 4
    face_batch: int = 96
    lr: float = 2e-3
    temperature: float = 0.1
    eval_people: int = 200
    aug_strength: float = 1.0
    eval_face_n: int = 1000
    #: share of face-net training portraits whose expression is a uniformly random vector rather than a jittered
    #: template (``sample_expression``); uniform draws force the net to read each factor on its own
    uniform_prob: float = 0.3
    #: weight of the gaze factors in the face-net loss: a 1-2 px shift of the iris that, at weight 1, the nets never
    #: learn to read (bench/analyser_errors.py: their gaze error equals a constant guess's; the shipped sets were
    #: trained at 1, BENCHMARKS.md "Face analysers" has the pilots behind 8)
    gaze_weight: float = 8.0
    #: where the face net trains ("cpu", "cuda"); data is always made and augmented on the CPU, so a run's draws
    #: are the same on any device
    device: str = "cpu"
    #: processes that render face-net batches ahead of the training step (0: render in this process). The draws
    #: stay in this process, so the data does not depend on the number of workers
    render_workers: int = 0


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()


def _augment(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0):
    """Random scale/shift, blur, noise, brightness. Returns the images and the (scale, tx, ty) per image, in
    normalised [-1, 1] coordinates, mapping output coordinates to input ones: p_in = s * p_out + t."""
    b, dev = x.shape[0], x.device
    s = 1.0 + (torch.rand(b, generator=gen, device=dev) - 0.5) * 0.16 * strength
    t = (torch.rand(b, 2, generator=gen, device=dev) - 0.5) * 0.14 * strength
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = s
    theta[:, 1, 1] = s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    blur = torch.rand(b, generator=gen, device=dev) < 0.3 * strength
    if blur.any():
        x[blur] = F.avg_pool2d(x[blur], 3, 1, 1, count_include_pad=False)
    x = x * (1.0 + (torch.rand(b, 1, 1, 1, generator=gen, device=dev) - 0.5) * 0.2 * strength)
    noise = torch.randn(x.shape, generator=gen, device=dev)
    x = x + noise * torch.rand(b, 1, 1, 1, generator=gen, device=dev) * 0.03 * strength
    return x.clamp(0, 1), s, t


def _pixels_to_out(p: torch.Tensor, s: torch.Tensor, t: torch.Tensor, size: int) -> torch.Tensor:
    """Points (B, K, 2) in input pixels -> fractions of the augmented image."""
    n = p / size * 2.0 - 1.0
    n = (n - t[:, None, :]) / s[:, None, None]
    return (n + 1.0) / 2.0


def identity_batch(rng: np.random.Generator, cfg: AnalyserTrainConfig, id_range) -> tuple[torch.Tensor, torch.Tensor]:
    ids = rng.choice(np.arange(*id_range), size=cfg.p_ids, replace=False)
    ps = []
    labels = []
    for k, iid in enumerate(ids):
        ident = Identity.from_id(int(iid))
        for _ in range(cfg.k_per_id):
            ps.append(Portrait(int(iid), ident, sample_expression(rng), Style.sample(rng)))
            labels.append(k)
    return _to_tensor(render_array(ps, INPUT_SIZE)), torch.tensor(labels)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    sim = z @ z.t() / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    sim = sim.masked_fill(eye, -1e9)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    return -(logp * pos).sum(1).div(pos.sum(1).clamp(min=1)).mean()


def _negatives(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Non-faces made from faces: patch shuffles, upside-down, smooth noise, and flat colour fields."""
    b = x.shape[0]
    out = x.clone()
    kind = torch.randint(0, 4, (b,), generator=gen)
    for i in range(b):
        k = int(kind[i])
        if k == 0:  # shuffle a 4x4 or 8x8 grid of patches
            g = 4 if torch.rand(1, generator=gen).item() < 0.5 else 8
            ps = INPUT_SIZE // g
            patches = x[i].unfold(1, ps, ps).unfold(2, ps, ps).reshape(3, g * g, ps, ps)
            patches = patches[:, torch.randperm(g * g, generator=gen)]
            out[i] = patches.reshape(3, g, g, ps, ps).permute(0, 1, 3, 2, 4).reshape(3, INPUT_SIZE, INPUT_SIZE)
        elif k == 1:
            out[i] = x[i].flip(1)
        elif k == 2:
            r = int(torch.randint(2, 9, (1,), generator=gen))
            low = torch.rand(1, 3, r, r, generator=gen)
            out[i] = F.interpolate(low, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)[0]
        else:  # the portrait's background colour everywhere, with a blob
            bg = x[i, :, 2, 2].view(3, 1, 1)
            out[i] = bg.expand(3, INPUT_SIZE, INPUT_SIZE).clone()
            yy, xx = torch.meshgrid(torch.arange(INPUT_SIZE), torch.arange(INPUT_SIZE), indexing="ij")
            c = torch.rand(2, generator=gen) * INPUT_SIZE
            r = 8 + torch.rand(1, generator=gen) * 20
            blob = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r**2).float()
            out[i] = out[i] * (1 - blob) + torch.rand(3, 1, 1, generator=gen) * blob
    return out


def face_targets(ps: list[Portrait]) -> dict[str, torch.Tensor]:
    geo = [face_geometry(p, INPUT_SIZE) for p in ps]
    box = torch.tensor([g["box"] for g in geo], dtype=torch.float32).view(-1, 2, 2)
    lmk = torch.tensor(np.stack([g["landmarks"] for g in geo]), dtype=torch.float32)
    expr = torch.tensor(np.stack([p.expression.to_vector() for p in ps]), dtype=torch.float32)
    ratios = torch.tensor([[g["ratios"][n] for n in RATIO_NAMES] for g in geo], dtype=torch.float32)
    return {"box": box, "landmarks": lmk, "expression": expr, "ratios": ratios}


def gaze_visibility(expr: torch.Tensor) -> torch.Tensor:
    """Gaze cannot be seen when both eyes are closed: weight of the gaze factors per sample."""
    i_l, i_r = EXPRESSION_NAMES.index("eye_open_l"), EXPRESSION_NAMES.index("eye_open_r")
    return ((torch.maximum(expr[:, i_l], expr[:, i_r]) - 0.1) / 0.2).clamp(0, 1)


def _expr_weights(expr: torch.Tensor, gaze_weight: float = 1.0) -> torch.Tensor:
    w = torch.ones_like(expr)
    vis = gaze_visibility(expr) * gaze_weight
    for name in ("gaze_x", "gaze_y"):
        w[:, EXPRESSION_NAMES.index(name)] = vis
    return w


def _raw_expression(expr: torch.Tensor) -> torch.Tensor:
    """Expression factors in their natural ranges -> the face net's raw [-1, 1] scale (what its outputs are fit to)."""
    lo, hi = EXPR_LO.to(expr), EXPR_HI.to(expr)
    return (expr - lo) / (hi - lo) * 2.0 - 1.0


def _data_seeds(kind: str, round_: int) -> tuple[np.random.Generator, torch.Generator]:
    """Seed torch for a face-net training round of a set; return its portrait draws' and augmentations' generators."""
    torch.manual_seed(SEED[kind] + 10 + round_)
    offset = SEED[kind] + 1000 * round_
    return np.random.default_rng(300 + offset), torch.Generator().manual_seed(400 + offset)


def face_loss(net: FaceNet, x: torch.Tensor, tg: dict, s, t, n_pos: int, gaze_weight: float = 1.0) -> torch.Tensor:
    raw = net.raw(x)
    labels = torch.zeros(len(x), device=x.device)
    labels[:n_pos] = 1.0
    loss = F.binary_cross_entropy_with_logits(raw[:, OUT_PRESENCE].squeeze(1), labels)
    r = raw[:n_pos]
    box = _pixels_to_out(tg["box"], s, t, INPUT_SIZE).reshape(-1, 4)
    lmk = _pixels_to_out(tg["landmarks"], s, t, INPUT_SIZE).reshape(-1, 10)
    loss = loss + F.smooth_l1_loss(r[:, OUT_BOX], (box - 0.5) / 0.25, beta=0.05)
    loss = loss + F.smooth_l1_loss(r[:, OUT_LMK], (lmk - 0.5) / 0.25, beta=0.05)
    target = _raw_expression(tg["expression"])
    w = _expr_weights(tg["expression"], gaze_weight)
    loss = loss + 2.0 * (F.smooth_l1_loss(r[:, OUT_EXPR], target, reduction="none", beta=0.05) * w).mean()
    rt = (tg["ratios"] - net.ratio_mean) / net.ratio_std
    loss = loss + F.smooth_l1_loss(r[:, OUT_RATIOS], rt, beta=0.05)
    return loss


def _cosine_lr(opt, step: int, total: int, base: float, warmup: int = 50, start: int = 0) -> None:
    """One cosine from ``base`` to 0 over ``total`` steps, warmed up linearly over the ``warmup`` steps from ``start``
    (a run that continues a cosine begun by an earlier one starts at its ``step`` with fresh optimiser moments)."""
    lr = base * min(1.0, (step - start + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
    for g in opt.param_groups:
        g["lr"] = lr


def train_identity(
    cfg: AnalyserTrainConfig, log=print, init: IdentityNet | None = None, round_: int = 0
) -> IdentityNet:
    """Train the identity net from scratch, or continue ``init`` (``round_`` > 0 draws fresh data)."""
    torch.manual_seed(SEED[cfg.kind] + round_)
    rng = np.random.default_rng(100 + SEED[cfg.kind] + 1000 * round_)
    gen = torch.Generator().manual_seed(200 + SEED[cfg.kind] + 1000 * round_)
    net = IdentityNet(ARCH[cfg.kind]) if init is None else init.requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    net.train()
    t0 = time.time()
    for step in range(cfg.identity_steps):
        _cosine_lr(opt, step, cfg.identity_steps, cfg.lr)
        x, labels = identity_batch(rng, cfg, SPLITS[cfg.kind])
        x, _, _ = _augment(x, gen, 0.7)
        loss = supcon_loss(net(x), labels, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.identity_steps - 1:
            took = time.time() - t0
            log(f"[{cfg.kind} identity] step {step}/{cfg.identity_steps} loss {loss.item():.3f} ({took:.0f}s)")
    return net.eval()


def train_face(cfg: AnalyserTrainConfig, log=print, init: FaceNet | None = None, round_: int = 0) -> FaceNet:
    """Train the face net from scratch, or continue ``init`` (``round_`` > 0 draws fresh data)."""
    rng, gen = _data_seeds(cfg.kind, round_)
    if init is None:
        net = FaceNet(ARCH[cfg.kind])
        probe = [_sample(rng, SPLITS[cfg.kind]) for _ in range(2000)]
        ratios = face_targets(probe)["ratios"]
        net.ratio_mean.copy_(ratios.mean(0))
        net.ratio_std.copy_(ratios.std(0).clamp(min=1e-3))
    else:
        net = init.requires_grad_(True)
    dev = torch.device(cfg.device)
    net.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    net.train()
    t0 = time.time()
    n_pos = cfg.face_batch * 3 // 4
    draws = (
        [_sample(rng, SPLITS[cfg.kind], cfg.uniform_prob) for _ in range(cfg.face_batch)] for _ in range(cfg.face_steps)
    )
    for step, (ps, x) in enumerate(rendered_batches(draws, cfg.render_workers)):
        _cosine_lr(opt, step, cfg.face_steps, cfg.lr)
        x = torch.cat([x[:n_pos], _negatives(x[n_pos:], gen)])
        x, s, t = _augment(x, gen, cfg.aug_strength)
        tg = {k: v.to(dev) for k, v in face_targets(ps[:n_pos]).items()}
        loss = face_loss(net, x.to(dev), tg, s[:n_pos].to(dev), t[:n_pos].to(dev), n_pos, cfg.gaze_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.face_steps - 1:
            log(f"[{cfg.kind} face] step {step}/{cfg.face_steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    return net.eval().cpu()


def _render(ps: list[Portrait]) -> torch.Tensor:
    return _to_tensor(render_array(ps, INPUT_SIZE))


def _run_ahead(fn, arg_tuples, workers: int = 0, ahead: int = 2):
    """Yield ``(args, fn(*args))`` for each tuple in ``arg_tuples``, in order. With ``workers`` > 0 the calls run in
    that many spawned processes, at most ``ahead`` per worker in advance (bounded, so memory stays flat when the
    training step is the slower side)."""
    if workers <= 0:
        for args in arg_tuples:
            yield args, fn(*args)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending: deque = deque()
        for args in arg_tuples:
            pending.append((args, pool.apply_async(fn, args)))
            if len(pending) >= workers * ahead:
                done, res = pending.popleft()
                yield done, res.get()
        while pending:
            done, res = pending.popleft()
            yield done, res.get()


def rendered_batches(draws, workers: int = 0, ahead: int = 2):
    """Yield ``(portraits, images)`` for each list of portraits in ``draws``, in order, rendered by ``workers``
    spawned processes (0: here), at most ``ahead`` batches per worker in advance."""
    for (ps,), x in _run_ahead(_render, ((ps,) for ps in draws), workers, ahead):
        yield ps, x


def _expressions(ps: list[Portrait]) -> torch.Tensor:
    return torch.tensor(np.stack([p.expression.to_vector() for p in ps]), dtype=torch.float32)


def step_seeded_draw(
    kind: str, round_: int, step: int, batch: int, uniform_prob: float, sketch_prob: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One part-training step's portraits, drawn from a seed of that step's own and rendered: (images, expression
    vectors). Drawing in the render workers frees the training process for the net, which is what keeps a GPU busy
    (on this CPU, drawing 96 portraits takes about an eighth of the time rendering them does); the data depends on
    the step, not on the number of workers, but differs from the default draws' (one generator over the round)."""
    rng = np.random.default_rng([300 + SEED[kind] + 1000 * round_, step])
    ps = [_sample(rng, SPLITS[kind], uniform_prob) for _ in range(batch)]
    if sketch_prob:
        ps = [_as_sketch(p) if rng.random() < sketch_prob else p for p in ps]
    return _render(ps), _expressions(ps)


def _as_sketch(p: Portrait) -> Portrait:
    return replace(p, style=replace(p.style, shading="sketch"))


def _sample(rng: np.random.Generator, id_range, uniform_prob: float = 0.3) -> Portrait:
    return sample_with_source(rng, id_range, uniform_prob)[0]


def sample_with_source(rng: np.random.Generator, id_range, uniform_prob: float = 0.3) -> tuple[Portrait, bool]:
    """A random portrait of a person in ``id_range``, and whether its expression was drawn uniformly."""
    iid = int(rng.integers(*id_range))
    ident = Identity.from_id(iid)
    expr, uniform = sample_expression_with_source(rng, uniform_prob)
    return Portrait(iid, ident, expr, Style.sample(rng)), uniform


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive pair outscores a negative one; ties count half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = scores[order]
    # average ranks for ties
    i = 0
    r = np.arange(1, len(s) + 1, dtype=np.float64)
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        r[i : j + 1] = (i + j + 2) / 2.0
        i = j + 1
    ranks[order] = r
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def evaluate_identity(net: IdentityNet, n_ids: int = 200, per_id: int = 5, seed: int = 12345) -> dict:
    """Verification on held-out people, each seen with random expressions and styles."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(*HELDOUT), size=n_ids, replace=False)
    ps = []
    for iid in ids:
        ident = Identity.from_id(int(iid))
        ps += [Portrait(int(iid), ident, sample_expression(rng), Style.sample(rng)) for _ in range(per_id)]
    x = _to_tensor(render_array(ps, INPUT_SIZE))
    z = torch.cat([net(x[k : k + 256]) for k in range(0, len(x), 256)]).numpy()
    lab = np.repeat(np.arange(n_ids), per_id)
    iu = np.triu_indices(len(z), 1)
    sims = (z @ z.T)[iu]
    same = (lab[:, None] == lab[None, :])[iu]
    return {
        "verification_roc_auc": roc_auc(sims, same),
        "mean_cos_same": float(sims[same].mean()),
        "mean_cos_different": float(sims[~same].mean()),
        "n_people": n_ids,
        "per_person": per_id,
    }


@torch.no_grad()
def evaluate_face(net: FaceNet, n: int = 1000, seed: int = 54321) -> dict:
    """Expression MAE (fraction of each factor's range), ratio MAE, landmark error and presence accuracy on held-out
    people; gaze is scored only where at least one eye is open (it is invisible otherwise)."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    ps = [_sample(rng, HELDOUT) for _ in range(n)]
    x = _to_tensor(render_array(ps, INPUT_SIZE))
    out = [net(x[k : k + 250]) for k in range(0, n, 250)]
    pred = {k: torch.cat([o[k] for o in out]) for k in out[0]}
    tg = face_targets(ps)
    span = EXPR_HI - EXPR_LO
    err = (pred["expression"] - tg["expression"]).abs() / span
    w = _expr_weights(tg["expression"])
    mae = (err * w).sum(0) / w.sum(0)
    ratio_err = (pred["ratios"] - tg["ratios"]).abs().mean(0)
    lmk_px = (pred["landmarks"] * INPUT_SIZE - tg["landmarks"]).norm(dim=-1).mean().item()
    neg = _negatives(x[:500], gen)
    pneg = torch.cat([net(neg[k : k + 250])["presence"] for k in range(0, len(neg), 250)])
    return {
        "expression_mae_frac": {n_: float(v) for n_, v in zip(EXPRESSION_NAMES, mae, strict=True)},
        "expression_mae_frac_max": float(mae.max()),
        "expression_mae_frac_mean": float(mae.mean()),
        "ratio_mae": {n_: float(v) for n_, v in zip(RATIO_NAMES, ratio_err, strict=True)},
        "landmark_error_px": lmk_px,
        "presence_true_positive_rate": float((pred["presence"] > 0.5).float().mean()),
        "presence_true_negative_rate": float((pneg < 0.5).float().mean()),
        "n": n,
        "ranges": {n_: [lo, hi] for n_, lo, hi in EXPRESSION_RANGES},
    }


def _save_half(net: torch.nn.Module, path: Path) -> None:
    """A net's weights as float16 safetensors (integer buffers kept)."""
    from safetensors.torch import save_file

    sd = {
        k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in net.state_dict().items()
    }
    save_file(sd, str(path))


def _load_face_net(folder: Path, info: dict, parts: bool, parts_arch: str | None = None) -> FaceNet:
    """A saved face net; with ``parts``, its part heads too: new ones if the saved net has none, or if ``parts_arch``
    names another architecture than the saved heads'."""
    from safetensors.torch import load_file

    saved_arch = saved_parts_arch(info)
    net = FaceNet(info["face_arch"], parts=parts, parts_arch=parts_arch or saved_arch)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(folder / "face.safetensors")).items()}
    if parts_arch not in (None, saved_arch):
        sd = {k: v for k, v in sd.items() if not k.startswith("parts.")}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if unexpected or any(not k.startswith("parts.") for k in missing):
        raise ValueError(f"'{folder}/face.safetensors' does not hold a face net of architecture '{info['face_arch']}'")
    return net


def save_analysers(out: str | Path, kind: str, identity: IdentityNet, face: FaceNet, info: dict) -> None:
    out = Path(out, kind)
    out.mkdir(parents=True, exist_ok=True)
    for name, net in (("identity", identity), ("face", face)):
        _save_half(net, out / f"{name}.safetensors")
    cfg = {"kind": kind, "identity_arch": identity.arch, "face_arch": face.arch, "identity_dim": identity.dim, **info}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def train_and_save(out: str | Path, cfg: AnalyserTrainConfig, log=print) -> dict:
    t0 = time.time()
    ident = train_identity(cfg, log)
    t1 = time.time()
    face = train_face(cfg, log)
    t2 = time.time()
    id_metrics = evaluate_identity(ident, n_ids=cfg.eval_people)
    face_metrics = evaluate_face(face, n=cfg.eval_face_n)
    info = {
        "train_config": asdict(cfg),
        "identity_ids": list(SPLITS[cfg.kind]),
        "seed": SEED[cfg.kind],
        "identity_train_seconds": round(t1 - t0, 1),
        "face_train_seconds": round(t2 - t1, 1),
        "heldout_identity": id_metrics,
        "heldout_face": face_metrics,
    }
    save_analysers(out, cfg.kind, ident, face, info)
    log(json.dumps({"identity": id_metrics, "face_mae_max": face_metrics["expression_mae_frac_max"]}))
    return info


def refine_face(
    out: str | Path,
    kind: str,
    steps: int,
    lr: float = 1e-3,
    aug: float = 0.5,
    uniform_prob: float = 0.3,
    gaze_weight: float = 8.0,
    log=print,
    device: str = "cpu",
    render_workers: int = 0,
) -> dict:
    """Continue training a saved face net with fresh data, a lower peak learning rate and milder augmentation;
    re-evaluate and overwrite ``face.safetensors`` (the identity net is kept). Part heads, if the set has them,
    train along."""
    folder = Path(out, kind)
    info = json.loads((folder / "config.json").read_text())
    net = _load_face_net(folder, info, parts=info.get("face_parts", False))
    cfg = AnalyserTrainConfig(
        kind=kind,
        face_steps=steps,
        lr=lr,
        aug_strength=aug,
        uniform_prob=uniform_prob,
        gaze_weight=gaze_weight,
        device=device,
        render_workers=render_workers,
    )
    t0 = time.time()
    # each refinement draws fresh data: round 1 for the first, 2 for the next, ...
    round_ = 1 + ("face_refine" in info) + len(info.get("face_refine_history", []))
    net = train_face(cfg, log, init=net, round_=round_)
    metrics = evaluate_face(net, n=cfg.eval_face_n)
    _save_half(net, folder / "face.safetensors")
    if "face_refine" in info:  # an earlier refinement: keep its record
        info.setdefault("face_refine_history", []).append(info["face_refine"])
    info["face_refine"] = {
        "steps": steps,
        "lr": lr,
        "aug_strength": aug,
        "uniform_prob": uniform_prob,
        "gaze_weight": gaze_weight,
        "device": device,
        "round": round_,
        "seconds": round(time.time() - t0, 1),
    }
    info["heldout_face"] = metrics
    (folder / "config.json").write_text(json.dumps(info, indent=2))
    log(json.dumps({"face_mae_max": metrics["expression_mae_frac_max"], "mean": metrics["expression_mae_frac_mean"]}))
    return info


def train_parts(
    out: str | Path,
    kind: str,
    steps: int,
    lr: float = 2e-3,
    batch: int = 96,
    aug: float = 0.5,
    uniform_prob: float = 0.6,
    gaze_weight: float = 8.0,
    log=print,
    render_workers: int = 0,
    eval_n: int = 1000,
    arch: str | None = None,
    sketch_prob: float = 0.0,
    vae_prob: float = 0.0,
    vae_base: str | Path | None = None,
    device: str = "cpu",
    step_seeded: bool = False,
    vae_pairs: bool = False,
    schedule: tuple[int, int] | None = None,
    max_seconds: float | None = None,
) -> dict:
    """Add :class:`~emojidiff.synthetic.nets.PartHeads` to a saved face net and train only them (the whole-face net
    stays frozen, batch-norm statistics included), on fresh data; re-evaluate and overwrite ``face.safetensors``.
    Running it again continues the saved heads. ``arch`` (default: the saved heads', else "pooled") other than the
    saved heads' replaces them with new ones, which train on the draws the replaced ones started with.
    ``sketch_prob`` re-styles that share of the draws as sketches (the style on which gaze and pout are hardest to
    read), decided by a generator of its own, so every other factor of every draw stays what the round draws.
    ``vae_prob`` passes that share of the renders through a round trip of a base's VAE (``vae_base``, default the
    shipped base) before the augmentations: generated images have that softness, and nets trained on clean renders
    read it badly (BENCHMARKS.md, "Face analysers"). ``vae_pairs`` instead trains every step on each render twice,
    as it is and after the round trip (twice the batch, for no more rendering).

    ``device`` is where the net trains (the data is always made on the CPU). ``step_seeded`` draws each step's
    portraits in the render workers (:func:`step_seeded_draw`): what keeps a GPU fed. ``schedule`` = (first, total)
    runs steps ``first`` .. ``first + steps`` of one cosine over ``total`` steps, so that a long schedule can be
    spread over several runs (each continuing the last one's saved heads). ``max_seconds`` stops training early once
    that much time has passed and saves what it has (the record says how many steps ran), so a run on a machine lent
    for a fixed time loses nothing."""
    for name, v in (("sketch_prob", sketch_prob), ("vae_prob", vae_prob)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be within 0..1, got {v}")
    if vae_pairs and vae_prob:
        raise ValueError("vae_pairs and vae_prob are two ways to train on round trips: choose one")
    first, total = schedule if schedule is not None else (0, steps)
    if not 0 <= first < total or first + steps > total:
        raise ValueError(f"schedule {schedule} does not hold steps {first}..{first + steps}")
    dev = torch.device(device)
    vae = None
    if vae_prob or vae_pairs:
        from .base_model import load_base_pipeline
        from .bench import vae_round_trip

        vae = load_base_pipeline(vae_base).vae.to(dev).eval().requires_grad_(False)
    folder = Path(out, kind)
    info = json.loads((folder / "config.json").read_text())
    saved_arch = saved_parts_arch(info)
    arch = arch or saved_arch
    if info.get("face_parts") and arch != saved_arch:
        replaced = {"arch": saved_arch, "train": info.pop("face_parts_train", [])}
        info["face_parts_replaced"] = [*info.get("face_parts_replaced", []), replaced]
    net = _load_face_net(folder, info, parts=True, parts_arch=arch)
    history = info.get("face_parts_train", [])
    round_ = 100 + len(history)  # fresh draws, apart from the face net's rounds
    rng, gen = _data_seeds(kind, round_)
    if dev.type != "cpu":
        gen = torch.Generator(device=dev).manual_seed(gen.initial_seed())
    net.to(dev)
    net.requires_grad_(False).eval()
    net.parts.requires_grad_(True).train()
    opt = torch.optim.AdamW(net.parts.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.time()
    sketch_rng = np.random.default_rng(500 + SEED[kind] + 1000 * round_)

    def draw() -> Portrait:
        p = _sample(rng, SPLITS[kind], uniform_prob)
        if sketch_prob and sketch_rng.random() < sketch_prob:
            p = _as_sketch(p)
        return p

    if step_seeded:
        args = ((kind, round_, s, batch, uniform_prob, sketch_prob) for s in range(steps))
        batches = (xe for _, xe in _run_ahead(step_seeded_draw, args, render_workers))
    else:
        draws = ([draw() for _ in range(batch)] for _ in range(steps))
        batches = ((x, _expressions(ps)) for ps, x in rendered_batches(draws, render_workers))
    vae_gen = torch.Generator(device=dev).manual_seed(600 + SEED[kind] + 1000 * round_)
    done = 0
    for step, (x, expr) in enumerate(batches):
        if max_seconds is not None and time.time() - t0 > max_seconds:
            log(f"[{kind} parts] stopped after {step} of {steps} steps: --part-max-seconds {max_seconds:g} passed")
            break
        _cosine_lr(opt, first + step, total, lr, start=first)
        x, expr = x.to(dev), expr.to(dev)
        if vae_pairs:
            with torch.no_grad():
                x = torch.cat([x, vae_round_trip(vae, x, batch=len(x))])
            expr = torch.cat([expr, expr])
        elif vae is not None:
            through = torch.rand(len(x), generator=vae_gen, device=dev) < vae_prob
            if through.any():
                with torch.no_grad():
                    x[through] = vae_round_trip(vae, x[through], batch=len(x))
        x, _, _ = _augment(x, gen, aug)
        target = _raw_expression(expr)
        raw, parts = net.raw_and_parts(x)
        w = _expr_weights(expr, gaze_weight)
        loss = 2.0 * (F.smooth_l1_loss(raw[:, OUT_EXPR], target, reduction="none", beta=0.05) * w).mean()
        # each head on its own factors too, so the heads learn to read their part whatever the fusion does
        part_err = F.smooth_l1_loss(parts, net.parts.targets(target), reduction="none", beta=0.05)
        loss = loss + 2.0 * (part_err * net.parts.targets(w, signed=False)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        if step % 100 == 0 or step == steps - 1:
            log(f"[{kind} parts] step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    net.eval().cpu()
    metrics = evaluate_face(net, n=eval_n)
    _save_half(net, folder / "face.safetensors")
    info["face_parts"] = True
    info["face_parts_arch"] = arch
    rec = {"steps": done, "lr": lr, "batch": batch, "aug_strength": aug, "uniform_prob": uniform_prob}
    if done < steps:
        rec["planned_steps"] = steps
    if sketch_prob:
        rec["sketch_prob"] = sketch_prob
    if vae_prob or vae_pairs:
        if vae_pairs:
            rec["vae_pairs"] = True
        else:
            rec["vae_prob"] = vae_prob
        rec["vae_base"] = str(vae_base) if vae_base else "shipped"
    if schedule is not None:
        rec["schedule"] = [first, total]
    if step_seeded:
        rec["step_seeded"] = True
    rec["device"] = dev.type
    rec.update(gaze_weight=gaze_weight, round=round_, seconds=round(time.time() - t0, 1))
    info["face_parts_train"] = [*history, rec]
    info["heldout_face"] = metrics
    (folder / "config.json").write_text(json.dumps(info, indent=2))
    log(json.dumps({"face_mae_max": metrics["expression_mae_frac_max"], "mean": metrics["expression_mae_frac_mean"]}))
    return info


if __name__ == "__main__":  # pragma: no cover - `emojidiff world pretrain --stages analysers` is the usual way
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["train", "eval"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--identity-steps", type=int, default=2000)
    ap.add_argument("--face-steps", type=int, default=2500)
    ap.add_argument("--refine-face-steps", type=int, default=0, help="only continue training the saved face net")
    ap.add_argument("--part-steps", type=int, default=0, help="only add (or continue) the saved face net's part heads")
    ap.add_argument("--part-lr", type=float, default=2e-3, help="peak learning rate of --part-steps")
    ap.add_argument("--part-aug", type=float, default=0.5, help="augmentation strength of --part-steps")
    ap.add_argument(
        "--part-arch",
        choices=PART_ARCHS,
        default=None,
        help="part-head architecture of --part-steps (default: the saved heads', else pooled); another one than the "
        "saved heads' replaces them",
    )
    ap.add_argument(
        "--sketch-prob",
        type=float,
        default=0.0,
        help="share of --part-steps draws re-styled as sketches (besides the third drawn as sketches anyway)",
    )
    ap.add_argument(
        "--vae-prob", type=float, default=0.0, help="share of --part-steps renders round-tripped through a VAE"
    )
    ap.add_argument(
        "--vae-pairs", action="store_true", help="train --part-steps on every render as is and after a VAE round trip"
    )
    ap.add_argument("--vae-base", default=None, help="the base whose VAE --vae-prob uses (default: the shipped one)")
    ap.add_argument(
        "--step-seeded-draws",
        action="store_true",
        help="draw each --part-steps step's portraits in the render workers, from a seed of its own (feeds a GPU)",
    )
    ap.add_argument(
        "--part-schedule",
        type=int,
        nargs=2,
        metavar=("FIRST", "TOTAL"),
        default=None,
        help="run steps FIRST.. of one cosine over TOTAL steps (a long schedule spread over several runs)",
    )
    ap.add_argument(
        "--part-max-seconds", type=float, default=None, help="stop --part-steps early after this long, saving the heads"
    )
    ap.add_argument("--refine-lr", type=float, default=1e-3, help="peak learning rate of --refine-face-steps")
    ap.add_argument("--refine-aug", type=float, default=0.5, help="augmentation strength of --refine-face-steps")
    ap.add_argument("--uniform-prob", type=float, default=0.3, help="share of uniformly random expressions (face net)")
    ap.add_argument("--gaze-weight", type=float, default=8.0, help="weight of the gaze factors in the face-net loss")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="where the face net (or its part heads) trains, e.g. cuda")
    ap.add_argument("--render-workers", type=int, default=0, help="processes rendering face-net batches ahead")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.part_steps:
        train_parts(
            a.out,
            a.kind,
            a.part_steps,
            a.part_lr,
            aug=a.part_aug,
            uniform_prob=a.uniform_prob,
            gaze_weight=a.gaze_weight,
            render_workers=a.render_workers,
            arch=a.part_arch,
            sketch_prob=a.sketch_prob,
            vae_prob=a.vae_prob,
            vae_base=a.vae_base,
            device=a.device,
            step_seeded=a.step_seeded_draws,
            vae_pairs=a.vae_pairs,
            schedule=tuple(a.part_schedule) if a.part_schedule else None,
            max_seconds=a.part_max_seconds,
        )
        raise SystemExit(0)
    if a.refine_face_steps:
        refine_face(
            a.out,
            a.kind,
            a.refine_face_steps,
            a.refine_lr,
            a.refine_aug,
            a.uniform_prob,
            a.gaze_weight,
            device=a.device,
            render_workers=a.render_workers,
        )
        raise SystemExit(0)
    cfg = AnalyserTrainConfig(a.kind, a.identity_steps, a.face_steps, uniform_prob=a.uniform_prob)
    cfg.gaze_weight = a.gaze_weight
    cfg.device, cfg.render_workers = a.device, a.render_workers
    train_and_save(a.out, cfg)
