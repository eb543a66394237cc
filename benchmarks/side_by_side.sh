#!/usr/bin/env bash
# Two gpu_suite.sh runs side by side on a two-GPU host, one per GPU, each with its own stages and arguments:
#   GPU0_ENV='STAGES="train_step" STEP_ARGS="--recipes ufp4"' GPU1_ENV='STAGES="tests bench_shapes"' \
#     bash benchmarks/side_by_side.sh
# Results: $OUT/gpu0 and $OUT/gpu1 (each with suite/ and gpu_suite.tar.gz). Installs once, first.
# RETURN=<dir> (a remote run's returned folder, which brings back only a few files): each GPU's whole folder
# is also tarred there as gpu0.tgz / gpu1.tgz, whatever its stages left.
set -u
OUT=${OUT:-benchmarks/results/side_by_side}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || echo "install failed"
env CUDA_VISIBLE_DEVICES=0 SKIP_INSTALL=1 OUT="$OUT/gpu0" bash -c "${GPU0_ENV:-} bash benchmarks/gpu_suite.sh" \
  >"$OUT/gpu0.log" 2>&1 &
env CUDA_VISIBLE_DEVICES=1 SKIP_INSTALL=1 OUT="$OUT/gpu1" bash -c "${GPU1_ENV:-} bash benchmarks/gpu_suite.sh" \
  >"$OUT/gpu1.log" 2>&1 &
wait
if [ -n "${RETURN:-}" ]; then
  mkdir -p "$RETURN"
  for g in 0 1; do tar czf "$RETURN/gpu$g.tgz" -C "$OUT" "gpu$g" "gpu$g.log"; done
fi
cat "$OUT/gpu0.log" "$OUT/gpu1.log"
