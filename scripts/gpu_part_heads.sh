#!/usr/bin/env bash
# Train the synthetic analysers' part heads further on one CUDA GPU, both sets side by side, each continuing its
# saved heads for a share of one long cosine (train_analysers --part-schedule). Rendering is the slow side, so the
# CPU cores are split between the two sets' render workers, which also draw the portraits (--step-seeded-draws).
#
#   bash scripts/gpu_part_heads.sh RUN FIRST TOTAL STEPS SECONDS [KIND ...]
#
# RUN/KIND holds a set's config.json and face.safetensors (a copy of the shipped set, or an earlier share's output);
# FIRST, TOTAL: the steps of the cosine this share starts at, and its length; STEPS: this share's steps, or "auto":
# as many as SECONDS allows at the render rate measured first (0.9 of it). TOTAL "auto" (with FIRST 0) means twice
# this share's steps: a schedule of two equal shares. Each set stops at SECONDS anyway and saves what it has.
# Every render is trained on twice, as it is and after the base VAE's round trip (--vae-pairs). DEVICE=cpu runs
# it without a GPU (for a check of the script).
set -euo pipefail
run=$1 first=$2 total=$3 steps=$4 seconds=$5
shift 5
if [ $# -eq 0 ]; then kinds=(train eval); else kinds=("$@"); fi
workers=$(( ($(nproc) - 2) / ${#kinds[@]} )); [ "$workers" -ge 1 ] || workers=1
if [ "$steps" = auto ]; then
  steps=$(python3 -c '
import multiprocessing as mp, sys, time
from emojidiff.synthetic.train_analysers import step_seeded_draw
w, n_sets, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
with mp.get_context("spawn").Pool(w * n_sets) as pool:
    pool.starmap(step_seeded_draw, [("train", 999, s, 96, 0.6) for s in range(w * n_sets)])  # start-up
    t = time.time()
    pool.starmap(step_seeded_draw, [("train", 999, s, 96, 0.6) for s in range(6 * w * n_sets)])
    rate = 6 * w / (time.time() - t)
print(int(0.9 * rate * seconds))
print(f"render rate {rate:.1f} batches/s per set", file=sys.stderr)
' "$workers" "${#kinds[@]}" "$seconds")
fi
[ "$total" = auto ] && total=$(( 2 * steps ))
echo "workers per set $workers, steps $first..$(( first + steps )) of $total, at most ${seconds}s" | tee "$run/plan.txt"
for kind in "${kinds[@]}"; do
  python3 -m emojidiff.synthetic.train_analysers --kind "$kind" --out "$run" --part-steps "$steps" \
    --part-schedule "$first" "$total" --part-max-seconds "$seconds" --part-aug 0 --uniform-prob 0.6 \
    --vae-pairs --step-seeded-draws --device "${DEVICE:-cuda}" --render-workers "$workers" --threads 1 >"$run/$kind.log" 2>&1 &
done
wait
tail -n 3 "$run"/*.log
