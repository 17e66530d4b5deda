"""IDI rounds: synthesise cross-identity triplets with the current model, train the next model on them, repeat."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path

from ..adapter.config import EmojiDiffConfig
from ..adapter.core import resolve_adapter
from ..data.manifest import read_manifest, write_manifest
from ..errors import InputError
from .config import IDIConfig
from .report import write_json
from .sources import read_sources
from .synth import REPORT_FILE, check_fingerprint, enumerate_candidates, merge_round, synthesize_round


def round_dir(out: str | Path, r: int) -> Path:
    return Path(out) / f"round-{r}"


def _round_finished(rd: Path, n_candidates: int) -> bool:
    p = rd / REPORT_FILE
    return p.is_file() and json.loads(p.read_text()).get("candidates") == n_candidates


def training_manifest(out: Path, r: int, cfg: IDIConfig) -> Path:
    """Round ``r``'s training data: its kept triplets, those of earlier rounds (if mixing) and ``mix_manifests``."""
    sources = [round_dir(out, k) / "triplets.jsonl" for k in (range(1, r + 1) if cfg.mix_previous_rounds else [r])]
    triplets = []
    for p in sources:
        if p.is_file() and p.read_text().strip():
            triplets += read_manifest(p)
    for m in cfg.mix_manifests:
        triplets += read_manifest(m)
    if not triplets:
        raise InputError(
            f"IDI round {r} kept no triplet and nothing is mixed in: loosen the filter thresholds (see "
            f"{round_dir(out, r) / 'report.md'}) or add mix_manifests"
        )
    path = round_dir(out, r) / "train_manifest.jsonl"
    write_manifest(path, triplets)
    return path


def train_config(cfg: IDIConfig, adapter: str, manifest: Path, output_dir: Path, base: str | None, face_backend):
    from ..train.config import TrainConfig

    data = {"resolution": cfg.resolution, "seed": cfg.seed, "cache_dir": str(output_dir.parent.parent / "cache")}
    if face_backend is not None:
        data["face_backend"] = face_backend
    data.update(cfg.train)
    data.setdefault("base", base or EmojiDiffConfig.load(resolve_adapter(adapter)).base_model)
    if not data["base"]:
        raise InputError(f"adapter '{adapter}' does not record its base model: pass --base")
    tc = TrainConfig(**data, adapter=str(adapter), train_manifest=str(manifest), output_dir=str(output_dir))
    tc.validate("IDI train settings")
    return tc


def run_idi(
    adapter: str | Path,
    templates: str | Path,
    identities: str | Path,
    out: str | Path,
    *,
    rounds: int = 1,
    cfg: IDIConfig | None = None,
    base: str | None = None,
    face_backend: str | None = None,
    on_record: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run ``rounds`` IDI rounds (resuming whatever an earlier run of the same command finished).

    Round ``r`` synthesises with the current model (``adapter`` for round 1), keeps the triplets passing the filters
    and, unless it is the last round with ``train_last_round: false``, trains the next model on them with the stage-1
    :class:`~emojidiff.train.loop.Trainer` (resuming its latest checkpoint). Synthesis is sharded over the
    Accelerate processes; the merge runs on the main process. Returns (and writes to ``OUT/idi.json``) a summary.
    """
    from accelerate import PartialState

    from ..pipeline import EmojiDiffPipeline

    cfg = cfg or IDIConfig()
    if rounds < 1:
        raise InputError("--rounds must be at least 1")
    from ..train.loop import multi_cpu

    state = PartialState(cpu=True) if multi_cpu() else PartialState()
    out = Path(out)
    tpl = read_sources(templates, "templates manifest")
    ids = read_sources(identities, "identities manifest")
    current = str(resolve_adapter(adapter))
    summary: dict = {"rounds": [], "start_adapter": current}
    for r in range(1, rounds + 1):
        rd = round_dir(out, r)
        cands, lonely = enumerate_candidates(tpl, ids, cfg, r)
        if not cands:
            raise InputError("no template can be paired: the identities manifest holds no other person than theirs")
        check_fingerprint(rd, cfg, cands, current, state.process_index)
        if not _round_finished(rd, len(cands)):
            pipe = EmojiDiffPipeline.from_pretrained(base, adapter=current, face_backend=face_backend)
            pipe.to(state.device)
            n = synthesize_round(
                pipe, cands, cfg, rd, rank=state.process_index, world=state.num_processes, on_record=on_record,
                show_progress=state.is_local_main_process,
            )  # fmt: skip
            del pipe
            gc.collect()
            log(f"round {r}: rank {state.process_index} processed {n} candidate(s)")
            state.wait_for_everyone()
            if state.is_main_process:
                merge_round(rd, cands, cfg, lonely)
            state.wait_for_everyone()
        report = json.loads((rd / REPORT_FILE).read_text())
        log(f"round {r}: kept {report['kept']} of {report['candidates']} ({100 * report['kept_ratio']:.1f} %)")
        entry = {"round": r, "adapter": current, "candidates": report["candidates"], "kept": report["kept"],
                 "kept_ratio": report["kept_ratio"], "triplets": str(rd / "triplets.jsonl")}  # fmt: skip
        if r < rounds or cfg.train_last_round:
            nxt = rd / "train" / "adapter"
            if not (nxt / "emojidiff.json").is_file():
                from ..train.loop import Trainer

                if state.is_main_process:
                    training_manifest(out, r, cfg)
                state.wait_for_everyone()
                tc = train_config(cfg, current, rd / "train_manifest.jsonl", rd / "train", base, face_backend)
                trainer = Trainer(tc)
                # keep the process group: the next round's synthesis still synchronises processes
                trainer.train(resume="latest", end_training=False)
                del trainer
                gc.collect()
                state.wait_for_everyone()
            current = str(nxt)
            entry["trained_adapter"] = current
            log(f"round {r}: next model in {current}")
        summary["rounds"].append(entry)
    summary["final_adapter"] = current
    if state.is_main_process:
        write_json(out / "idi.json", summary)
    return summary
