#!/usr/bin/env bash
# Two gpu_suite.sh runs side by side on a two-GPU host, one per GPU, each with its own stages and arguments:
#   GPU0_ENV='STAGES="train_step" STEP_ARGS="--recipes ufp4"' GPU1_ENV='STAGES="tests bench_shapes"' \
#     bash benchmarks/side_by_side.sh
# Results: $OUT/gpu0 and $OUT/gpu1 (each with suite/ and gpu_suite.tar.gz). Installs once, first.
set -u
OUT=${OUT:-benchmarks/results/side_by_side}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || echo "install failed"
env CUDA_VISIBLE_DEVICES=0 SKIP_INSTALL=1 OUT="$OUT/gpu0" bash -c "${GPU0_ENV:-} bash benchmarks/gpu_suite.sh" \
  >"$OUT/gpu0.log" 2>&1 &
env CUDA_VISIBLE_DEVICES=1 SKIP_INSTALL=1 OUT="$OUT/gpu1" bash -c "${GPU1_ENV:-} bash benchmarks/gpu_suite.sh" \
  >"$OUT/gpu1.log" 2>&1 &
wait
cat "$OUT/gpu0.log" "$OUT/gpu1.log"
