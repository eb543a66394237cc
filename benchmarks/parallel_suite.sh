#!/usr/bin/env bash
# Data-parallel `ufp4 train` on a two-GPU host (docs/train.md, "Data parallel"): the small preset under bf16 and
# ufp4, 200 steps, the same global batch everywhere:
#   one     one process on GPU 0                      (the reference)
#   fsdp2_1 FSDP2 over one rank on GPU 1              (side by side with `one`: separate GPUs)
#   ddp_2   DDP over two ranks
#   fsdp2_2 FSDP2 over two ranks (per-block compile, fully_shard per block and root)
# then benchmarks/parallel_report.py compares them. NVLink multicast stays off. With EXTRA=1 it then runs, side
# by side, the MoE step benchmark on GPU 0 and GPU tests plus the quantize-shapes benchmark on GPU 1.
#
#   OUT=/tmp/ps bash benchmarks/parallel_suite.sh     # results under $OUT/suite, bundled as $OUT/parallel_suite.tar.gz
set -u
OUT=${OUT:-benchmarks/results/parallel_suite}
R="$OUT/suite"
mkdir -p "$R"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$R/install.log" 2>&1 || echo "install failed"
nvidia-smi topo -m >"$R/topo.txt" 2>&1
ARGS=${TRAIN_ARGS:-"--preset small --recipes bf16,ufp4 --steps 200 --no-progress"}
MOD="-m ufp4_compile.cli.main train $ARGS"
t0=$SECONDS
CUDA_VISIBLE_DEVICES=0 timeout ${LIMIT_one:-220} python3 $MOD --out "$R/one" >"$R/one.log" 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout ${LIMIT_one:-220} torchrun --standalone --nproc-per-node 1 $MOD --parallel fsdp2 \
  --out "$R/fsdp2_1" >"$R/fsdp2_1.log" 2>&1 &
wait
echo "=== one + fsdp2_1 in $((SECONDS - t0))s" | tee -a "$R/status.txt"
for mode in ddp fsdp2; do
  t0=$SECONDS
  timeout ${LIMIT_two:-180} torchrun --standalone --nproc-per-node 2 $MOD --parallel $mode --out "$R/${mode}_2" \
    >"$R/${mode}_2.log" 2>&1
  echo "=== ${mode}_2 rc=$? in $((SECONDS - t0))s" | tee -a "$R/status.txt"
done
python3 benchmarks/parallel_report.py one="$R/one" fsdp2_1="$R/fsdp2_1" ddp_2="$R/ddp_2" fsdp2_2="$R/fsdp2_2" \
  --out "$R/parallel.md" 2>&1 | tee "$R/report.log"
if [ "${EXTRA:-0}" = 1 ]; then
  t0=$SECONDS
  CUDA_VISIBLE_DEVICES=0 timeout ${LIMIT_moe:-200} python3 benchmarks/train_step.py --model moe --recipes ufp4 \
    --variants inductor,ufp4 --iters 20 --warmup 3 --out "$R/moe" >"$R/moe.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=1 timeout ${LIMIT_moe:-200} bash -c "python3 -m pytest -q -m gpu -n 4 -p no:cacheprovider \
    ${TEST_FILES:-tests/lowering/test_kernel_calls.py tests/lowering/test_scaled_mm.py} >'$R/tests.log' 2>&1; \
    python3 benchmarks/quantize_shapes.py >'$R/quantize_shapes.txt' 2>&1" &
  wait
  echo "=== extra in $((SECONDS - t0))s" | tee -a "$R/status.txt"
fi
tar czf "$OUT/parallel_suite.tar.gz" -C "$OUT" suite
echo "=== summary"; cat "$R/status.txt"
for d in one fsdp2_1 ddp_2 fsdp2_2; do echo "--- $d"; tail -n 4 "$R/$d.log"; done
tail -n 3 "$R/tests.log" 2>/dev/null; grep -E "^(FAILED|ERROR)" "$R/tests.log" 2>/dev/null | head
grep -E "^\| " "$R"/moe/train_step_*.md 2>/dev/null | head -8
grep -E "copy|MISMATCH" "$R/quantize_shapes.txt" 2>/dev/null | head -40
