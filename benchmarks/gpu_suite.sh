#!/usr/bin/env bash
# The GPU evidence in one call: GPU tests (kernels vs reference at real shapes, the lowering, epilogue
# fusion through backend="ufp4"), the GEMM and quantize benchmarks, and Nsight Compute profiles of one
# GEMM and one quantize launch. Everything lands under $OUT (default benchmarks/results/gpu_suite) and is
# bundled into $OUT/gpu_suite.tar.gz. Each stage has its own time limit; a failing stage does not stop
# the others.
#
#   UFP4_GIT_SHA=$(git rev-parse --short HEAD) bash benchmarks/gpu_suite.sh   # everything (~6 min on an H100)
#   STAGES="bench_gemm" bash benchmarks/gpu_suite.sh
#   STAGES="bench_shapes sweep" SWEEP_ARGS=--quick bash benchmarks/gpu_suite.sh   # quantize at the step's shapes
#   STAGES="host" bash benchmarks/gpu_suite.sh                      # host cost per op call
#   STAGES="train_step" STEP_ARGS="--recipes ufp4 --profile 3" bash benchmarks/gpu_suite.sh   # issue 6
#   STAGES="train" TRAIN_ARGS="--preset small --recipes bf16,ufp4" bash benchmarks/gpu_suite.sh  # issue 7
# Limits per stage: LIMIT_<STAGE> seconds overrides the default (e.g. LIMIT_train=540).
# UFP4_GIT_SHA names the commit in the result headers where the machine's copy of the tree has no .git.
# The suite writes more files than a remote run may bring back: keep OUT outside the returned folder and
# copy only $OUT/gpu_suite.tar.gz there.
set -u
OUT=${OUT:-benchmarks/results/gpu_suite}
R="$OUT/suite"
mkdir -p "$R"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STAGES=${STAGES:-"env tests bench_gemm bench_quantize bench_shapes profile"}
NCU=${NCU:-$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)}

stage() {  # stage NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local override="LIMIT_$name"; limit=${!override:-$limit}
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$R/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$R/status.txt"
}

# Install into the interpreter that holds torch (a bare `pip` may belong to another one): the console
# script and the torch_dynamo_backends entry point must land beside torch.
# SKIP_INSTALL=1: already installed (two suites side by side on a two-GPU host must not both install).
[ -n "${SKIP_INSTALL:-}" ] || python3 -m pip install -q --no-deps --no-build-isolation -e . >"$R/install.log" 2>&1 \
  || echo "install failed (see install.log)"
stage env 30 bash -c 'nvidia-smi; python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"; git rev-parse HEAD'
TEST_FILES=${TEST_FILES:-"tests/kernels/test_quantize.py tests/kernels/test_quantize_pair.py tests/kernels/test_gemm.py tests/kernels/test_dequantize.py tests/lowering/test_scaled_mm.py tests/lowering/test_kernel_calls.py tests/test_emulate.py"}
# -v -rf: each test's outcome as it finishes, so a stage cut by its limit still names the failures it met
stage tests 150 python3 -m pytest -v -rf -m gpu -n 8 -p no:cacheprovider --junitxml="$R/pytest_gpu.xml" $TEST_FILES
stage host 60 python3 benchmarks/host_overhead.py --out "$R"
stage bench_gemm 200 python3 benchmarks/gemm.py --out "$R"
stage bench_quantize 200 python3 benchmarks/quantize.py --out "$R"
# The kernels at the training step's shapes under CUDA graphs, with their bits against the reference on the GPU.
stage bench_shapes 150 bash -c "python3 benchmarks/quantize_shapes.py > '$R/quantize_shapes.txt'"
# Tile sweep of the quantize kernel at the same shapes (SWEEP_ARGS="--quick" for fewer configs).
stage sweep 300 bash -c "python3 benchmarks/quantize_sweep.py ${SWEEP_ARGS:-} > '$R/quantize_sweep.txt'"
# ufp4 train writes one JSON per finished run under runs/; a cut-off stage keeps those, and --resume reuses them.
stage train 540 python3 -m ufp4_compile.cli.main train ${TRAIN_ARGS:---preset small} --no-progress --out "$R/train"
stage train_step 420 python3 benchmarks/train_step.py ${STEP_ARGS:-} --out "$R"
# A second step-benchmark run with its own arguments (e.g. the CUDA-graph variants), in its own folder.
[ -n "${STEP_CG_ARGS:-}" ] && stage train_step_cg 300 python3 benchmarks/train_step.py $STEP_CG_ARGS --out "$R/cg"
if [ -n "$NCU" ]; then
  SECTIONS="--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy"
  stage profile 80 bash -c "
    '$NCU' --clock-control none --kernel-name regex:_scaled_mm_kernel --launch-skip 1 --launch-count 1 $SECTIONS \
      python3 benchmarks/gemm.py --profile-one ufp4 > '$R/ncu_gemm.txt' 2>&1;
    '$NCU' --clock-control none --kernel-name regex:_quantize_kernel --launch-skip 1 --launch-count 1 $SECTIONS \
      python3 benchmarks/quantize.py --profile-one int4/16/fp32/stochastic > '$R/ncu_quantize.txt' 2>&1"
fi

tar czf "$OUT/gpu_suite.tar.gz" -C "$OUT" suite
cp "$R"/*.md "$OUT"/ 2>/dev/null
echo "=== summary"
cat "$R/status.txt"
tail -n 5 "$R/tests.log" 2>/dev/null
grep -E "^(FAILED|ERROR)|\] (FAILED|ERROR) " "$R/tests.log" 2>/dev/null | head -30
grep -E "8192\^3|ratio" "$R/bench_gemm.log" 2>/dev/null | head -12
grep -E "GB/s" "$R/bench_quantize.log" 2>/dev/null | head -30
grep -E "copy|MISMATCHES" "$R/quantize_shapes.txt" 2>/dev/null | head -40
grep -E "default|BEST|differ" "$R/quantize_sweep.txt" 2>/dev/null | head -30
grep -E "^\| " "$R"/host_overhead_*.md 2>/dev/null
cat "$R"/train_step_*.md "$R"/cg/train_step_*.md 2>/dev/null | grep -E "^\| " | head -40
grep -E "gap|ordering|floor" "$R"/train/results.md 2>/dev/null | head -20
grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued" "$R"/ncu_*.txt 2>/dev/null | head -30
