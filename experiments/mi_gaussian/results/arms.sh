#!/bin/sh
# The controlled arms (docs/bounds.md). Run from the repository root; each run writes curves.json
# after every evaluation. Committed: the first command (d = 20, the six arms that separate lag,
# noise and pairing, 20 paired runs, 2,000 steps). The full design of issue 26 (every arm, d = 10
# too) is the second pair of commands; on a quiet core it costs about 20 CPU-minutes per dimension.
python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-d20 dim=20 runs=20 steps=2000 eval_every=200 \
  'arms=[eta-mine,dv-mine,eta-mine/oracle,dv-mine/noise,eta-mine@N,dv-mine@N]' > experiments/mi_gaussian/results/arms-d20/log.txt 2>&1
# python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-full-d20 dim=20 runs=20 steps=3000 > arms-full-d20.log 2>&1
# python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-full-d10 dim=10 runs=20 steps=3000 > arms-full-d10.log 2>&1
