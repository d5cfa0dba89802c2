#!/bin/sh
# The full controlled-arms design of docs/bounds.md ("What drives the difference"): every arm
# (eta-mine, eta-mine-ema, eta-mine-clip, dv-mine, dv-mine-ema, eta-mine/oracle refreshed every 25
# steps, dv-mine/noise, and both bounds @N and @4N), 20 paired runs, 2,000 steps (the paper protocol's
# length in eta-paper), d = 20 then d = 10. Run from the repository root.
set -e
for d in 20 10; do
  out=experiments/mi_gaussian/results/arms-full-d$d
  mkdir -p $out
  nice -n 15 python -m experiments.mi_gaussian.arms --threads 1 --out $out dim=$d runs=20 steps=2000 eval_every=100 > $out/log.txt 2>&1
  python -m experiments.mi_gaussian.analysis $out > /dev/null
done
