#!/usr/bin/env bash
rm -rf /tmp/w; mkdir -p /tmp/w/r
export UFP4_GIT_SHA=$(cat SHA) PYTHONUNBUFFERED=1
( sleep ${WATCHDOG:-570}; tar czf $OUT/all.tgz -C /tmp/w . ) &
python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/w/install.log 2>&1
if [ -n "${TESTS:-}" ]; then timeout ${LIMIT_T:-150} python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider $TESTS > /tmp/w/tests.log 2>&1; echo "tests rc=$?"; tail -3 /tmp/w/tests.log; grep -E "^(FAILED|ERROR)" /tmp/w/tests.log | head; fi
if [ -n "${HP_VARIANTS:-}" ]; then timeout ${LIMIT_A:-200} python3 benchmarks/host_profile.py --variants $HP_VARIANTS --steps 4 --warmup 3 --out /tmp/w/r > /tmp/w/host_profile.log 2>&1; echo "host_profile rc=$?"; grep -E "^## |driver.py|static_triton_launcher|_empty_strided|_launch_kernel|torch.mm|triton_heuristics" /tmp/w/r/host_profile_*.md | head -30; fi
if [ -n "${STEP_ARGS:-}" ]; then timeout ${LIMIT_B:-300} python3 benchmarks/train_step.py $STEP_ARGS --out /tmp/w/r/step > /tmp/w/step.log 2>&1; echo "step rc=$?"; grep -E "^\| " /tmp/w/r/step/train_step_*.md | head -40; fi
tar czf $OUT/all.tgz -C /tmp/w .
