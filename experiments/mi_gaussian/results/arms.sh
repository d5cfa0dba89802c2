#!/bin/sh
# The controlled arms (docs/bounds.md). Run from the repository root; each run writes curves.json
# after every evaluation. Committed: the first command (d = 20, the six arms that separate lag,
# noise and pairing, 10 paired runs, 1,500 steps: what the shared machine could give). The full
# design (every arm, 20 runs, d = 20 and d = 10) is the commented pair below; each costs about
# 20 CPU-minutes on a quiet core.
python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-d20 dim=20 runs=10 steps=1500 eval_every=150 \
  'arms=[eta-mine,dv-mine,eta-mine/oracle,dv-mine/noise,eta-mine@N,dv-mine@N]' > experiments/mi_gaussian/results/arms-d20/log.txt 2>&1
# python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-full-d20 dim=20 runs=20 steps=3000 > arms-full-d20.log 2>&1
# python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-full-d10 dim=10 runs=20 steps=3000 > arms-full-d10.log 2>&1
