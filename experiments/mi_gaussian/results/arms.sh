#!/bin/sh
# The controlled arms (docs/bounds.md), the committed sizes: d = 20 with every arm, 20 paired runs,
# 3,000 steps; d = 10 with the six arms that separate lag, noise and pairing, 20 runs, 2,000 steps.
# Run from the repository root; each writes curves.json after every evaluation.
python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-d20 dim=20 runs=20 steps=3000 > experiments/mi_gaussian/results/arms-d20/log.txt 2>&1 &
python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-d10 dim=10 runs=20 steps=2000 \
  'arms=[eta-mine,dv-mine,eta-mine/oracle,dv-mine/noise,eta-mine@N,dv-mine@N]' > experiments/mi_gaussian/results/arms-d10/log.txt 2>&1 &
wait
