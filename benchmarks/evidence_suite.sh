#!/usr/bin/env bash
# The evidence-preset runs (docs/train.md, "The H200 evidence run") spread over the GPUs of one host and
# resumable across calls of a few minutes each:
#
#   JOBS0="bf16:2 ufp4:2 e2m1-ref:2" JOBS1="nvfp4:0 nvfp4:1" bash benchmarks/evidence_suite.sh
#   REPORT="0,1,2" RECIPES="bf16,e2m1-ref,nvfp4,ufp4,ufp4-mean" bash benchmarks/evidence_suite.sh
#
# JOBS<g> (g = 0..7): the runs GPU g trains, one after the other, as recipe:seed; "bf16:0r" is bf16 seed 0's
# same-seed repeat (the noise floor's; it reloads bf16 seeds 0 and 1). Every job starts from the finished runs
# of RUNS (default: the committed benchmarks/results/train_evidence_nvidia-h200/runs) and of $WORK/runs, so the
# bf16 run a gap needs is reloaded (`--resume`), not trained again. A finished run lands in $WORK/runs, the
# logs in $WORK/logs, and $OUT/runs_gpu<g>.tgz (both folders) is rewritten after each run: a call cut off by
# its time limit keeps what finished. $OUT holds nothing but the tarballs: a remote call returns only a few
# files, and a folder of logs beside them crowded the tarballs out once. REPORT (seeds) then writes the
# combined report of RECIPES over every run present into $OUT/report.tgz, with the noise floor's same-seed
# repeat of bf16 (NOISE_FLOOR=0: without); it trains whatever is missing, so list only what exists. Set
# UFP4_GIT_SHA where the machine's copy of the tree has a stale .git.
set -u
OUT=${OUT:-benchmarks/results/evidence_suite}
RUNS=${RUNS:-benchmarks/results/train_evidence_nvidia-h200/runs}
ARGS=${ARGS:-"--preset evidence --eval-batches 64 --no-progress"}
WORK=${WORK:-/tmp/ufp4_evidence}
LOGS="$WORK/logs"
mkdir -p "$OUT" "$WORK/runs" "$LOGS"
export PYTHONUNBUFFERED=1
[ -n "${SKIP_INSTALL:-}" ] || python3 -m pip install -q --no-deps --no-build-isolation -e . >"$LOGS/install.log" 2>&1 \
  || echo "install failed (see install.log)"
# Build the corpus once, before the GPUs' processes read it (two first builds would race on its cache).
case " $ARGS " in
  *" --preset evidence "*|*python-sources*)
    python3 -c "from ufp4_compile.data.corpus import load_corpus; load_corpus('python-sources')" >"$LOGS/corpus.log" 2>&1 ;;
esac

job_args() {  # recipe:seed -> ufp4 train arguments
  local recipe=${1%%:*} seed=${1#*:}
  case "$seed" in
    *r) echo "--recipes bf16 --seeds ${seed%r},$(( ${seed%r} + 1 )) --noise-floor" ;;
    *) [ "$recipe" = bf16 ] && echo "--recipes bf16 --seeds $seed" || echo "--recipes bf16,$recipe --seeds $seed" ;;
  esac
}

gpu_loop() {  # gpu jobs...
  local g=$1; shift
  for job in "$@"; do
    local dir="$WORK/gpu$g-${job/:/-}"
    mkdir -p "$dir/runs"
    cp -n "$RUNS"/*.json "$WORK"/runs/*.json "$dir/runs/" 2>/dev/null
    echo "=== gpu$g $job: $(job_args "$job")"
    # shellcheck disable=SC2046
    CUDA_VISIBLE_DEVICES=$g python3 -m ufp4_compile.cli.main train $ARGS $(job_args "$job") --resume --out "$dir" \
      >"$LOGS/gpu$g-${job/:/-}.log" 2>&1
    echo "=== gpu$g $job rc=$?"
    cp -n "$dir"/runs/*.json "$WORK/runs/" 2>/dev/null
    tar czf "$OUT/runs_gpu$g.tgz" -C "$WORK" runs logs
  done
}

for g in 0 1 2 3 4 5 6 7; do
  jobs_var="JOBS$g"
  [ -n "${!jobs_var:-}" ] && gpu_loop "$g" ${!jobs_var} &
done
wait

if [ -n "${REPORT:-}" ]; then
  dir="$WORK/report"
  mkdir -p "$dir/runs"
  cp "$RUNS"/*.json "$WORK"/runs/*.json "$dir/runs/" 2>/dev/null
  python3 -m ufp4_compile.cli.main train $ARGS --recipes "${RECIPES:-bf16,e2m1-ref,nvfp4,ufp4,ufp4-mean}" \
    --seeds "$REPORT" $([ "${NOISE_FLOOR:-1}" = 0 ] || echo --noise-floor) --resume --out "$dir" >"$dir/report.log" 2>&1
  echo "=== report rc=$?"
  tar czf "$OUT/report.tgz" -C "$dir" results.md results.json results.png report.log runs 2>/dev/null
  grep -E "^\| " "$dir/results.md" 2>/dev/null | head -30
fi
ls "$OUT"
