#!/usr/bin/env bash
rm -rf /tmp/w; mkdir -p /tmp/w/r
export UFP4_GIT_SHA=$(cat SHA) PYTHONUNBUFFERED=1
( sleep ${WATCHDOG:-560}; tar czf $OUT/all.tgz -C /tmp/w . ) &
python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/w/install.log 2>&1
timeout ${LIMIT_A:-250} python3 benchmarks/host_profile.py --variants ${HP_VARIANTS:-inductor,ufp4,ufp4-deqapart} --out /tmp/w/r > /tmp/w/host_profile.log 2>&1; echo "host_profile rc=$?"
[ -n "${STEP2_ARGS:-}" ] && { timeout ${LIMIT_B:-250} python3 benchmarks/train_step.py $STEP2_ARGS --out /tmp/w/r/step2 > /tmp/w/step2.log 2>&1; echo "step2 rc=$?"; }
tar czf $OUT/all.tgz -C /tmp/w .
grep -E "^## |ncalls|^ +[0-9]" /tmp/w/r/host_profile_*.md | head -80
grep -E "^\| " /tmp/w/r/step2/*.md 2>/dev/null | head; tail -5 /tmp/w/step2.log 2>/dev/null
