#!/usr/bin/env bash
# Train the synthetic world's bundled adapters end to end with the emojidiff commands a user would run:
#   data -> identity branch -> naive (round 0) -> IDI rounds -> ICA.
# Usage: bash scripts/train_synthetic_adapters.sh [RUN_DIR]        (defaults: runs/synthetic, data/synthetic)
#   QUICK=1   tiny data and a few steps of everything (smoke test, a few minutes on a CPU)
#   ROUNDS=N  IDI rounds (default 1); N_PEOPLE, N_TEMPLATES: data sizes (default 2000, 600)
#   NPROC=N   processes for IDI (default 2, as the shipped adapters were made on 2 CPU cores; its training batch in
#             configs/synthetic/idi.yaml is per process). One GPU: NPROC=1 IDI_BATCH_SIZE=64 (the same total batch)
#   IDI_BATCH_SIZE=N  per-process batch of IDI's training (default: the config's)
# Every stage is skipped when its output exists, so the script can be run again after an interruption.
set -euo pipefail
RUN=${1:-runs/synthetic}
DATA=${DATA:-data/synthetic/round0}
ROUNDS=${ROUNDS:-1}
N_PEOPLE=${N_PEOPLE:-2000}
N_TEMPLATES=${N_TEMPLATES:-600}
CFG=configs/synthetic
mkdir -p "$RUN/configs"
if [[ "${QUICK:-0}" == 1 ]]; then N_PEOPLE=40; N_TEMPLATES=12; fi

# configs with this run's paths (and, in quick mode, a few steps)
for f in stage1-identity stage1-naive ica; do
  sed -e "s#\.\./\.\./data/synthetic/round0#$(realpath -m "$DATA")#" -e "s#\.\./\.\./runs/synthetic#$(realpath -m "$RUN")#" \
      -e "s#idi/round-1/#idi/round-$ROUNDS/#" "$CFG/$f.yaml" > "$RUN/configs/$f.yaml"
done
cp "$CFG/idi.yaml" "$RUN/configs/idi.yaml"
if [[ -n "${IDI_BATCH_SIZE:-}" ]]; then sed -i "s/^  batch_size: [0-9]*/  batch_size: $IDI_BATCH_SIZE/" "$RUN/configs/idi.yaml"; fi
if [[ -n "${NUM_WORKERS:-}" ]]; then  # data-loader processes (PNG decoding) for every training stage
  for f in stage1-identity stage1-naive ica; do echo "num_workers: $NUM_WORKERS" >> "$RUN/configs/$f.yaml"; done
  sed -i "s/^train:$/train:\n  num_workers: $NUM_WORKERS/" "$RUN/configs/idi.yaml"
fi
if [[ "${QUICK:-0}" == 1 ]]; then
  sed -i -e 's/max_steps: .*/max_steps: 4/' -e 's/checkpointing_steps: .*/checkpointing_steps: 2/' \
      -e 's/validation_steps: [1-9].*/validation_steps: 4/' -e 's/batch_size: .*/batch_size: 4/' \
      -e 's/num_inference_steps: .*/num_inference_steps: 4/' -e 's/reid_steps: .*/reid_steps: 4/' "$RUN"/configs/*.yaml
  # untrained quick models pass no real filter: keep everything that has a face
  sed -i -e 's/max_expression_error: .*/max_expression_error: 100/' -e 's/min_identity_sim: .*/min_identity_sim: -1/' \
      -e 's/max_template_identity_sim: .*/max_template_identity_sim: 1/' -e 's/min_identity_margin: .*/min_identity_margin: -2/' \
      "$RUN/configs/idi.yaml"
fi

[[ -f "$DATA/triplets.jsonl" ]] || emojidiff world pairs --out "$DATA" --n-people "$N_PEOPLE"
head -n "$N_TEMPLATES" "$DATA/templates.jsonl" > "$DATA/templates-idi.jsonl"
[[ -f "$RUN/init/emojidiff.json" ]] || emojidiff init-adapter --base synthetic --face-backend synthetic --out "$RUN/init"
[[ -f "$RUN/identity/adapter/emojidiff.json" ]] || emojidiff train --config "$RUN/configs/stage1-identity.yaml" --resume latest
[[ -f "$RUN/naive/adapter/emojidiff.json" ]] || emojidiff train --config "$RUN/configs/stage1-naive.yaml" --resume latest
LAUNCH="torchrun --standalone --nproc_per_node ${NPROC:-2} -m emojidiff"
$LAUNCH idi --adapter "$RUN/naive/adapter" --templates "$DATA/templates-idi.jsonl" \
    --identities "$DATA/identities.jsonl" --out "$RUN/idi" --rounds "$ROUNDS" --config "$RUN/configs/idi.yaml"
[[ -f "$RUN/ica/adapter/emojidiff.json" ]] || emojidiff ica --config "$RUN/configs/ica.yaml" --resume latest
echo "adapters: $RUN/naive/adapter $RUN/idi/round-$ROUNDS/train/adapter $RUN/ica/adapter"
