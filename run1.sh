#!/usr/bin/env bash
# one device call: GPU tests of the new launch, then the step benchmark (ufp4 with and without it)
rm -rf /tmp/w; mkdir -p /tmp/w
export UFP4_GIT_SHA=$(cat SHA)
( sleep ${WATCHDOG:-560}; tar czf $OUT/all.tgz -C /tmp/w . ) &
OUT_FINAL=$OUT
OUT=/tmp/w/suite1 STAGES="env tests train_step" \
  TEST_FILES="${TEST_FILES}" \
  LIMIT_tests=240 LIMIT_train_step=330 \
  STEP_ARGS="${STEP_ARGS}" bash benchmarks/gpu_suite.sh > /tmp/w/suite1.out 2>&1
tar czf $OUT_FINAL/all.tgz -C /tmp/w .
tail -60 /tmp/w/suite1.out
