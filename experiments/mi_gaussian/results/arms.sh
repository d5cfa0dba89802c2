#!/bin/sh
# The controlled arms (docs/bounds.md). Run from the repository root; each run writes curves.json
# after every evaluation, and run.json its command, settings and times. d = 20, the six arms that
# separate lag, noise and pairing, 10 paired runs, 1,500 steps, the oracle refreshed every 200 steps:
python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-d20 dim=20 runs=10 steps=1500 eval_every=150 refresh=200 \
  'arms=[eta-mine,dv-mine,eta-mine/oracle,dv-mine/noise,eta-mine@N,dv-mine@N]' > experiments/mi_gaussian/results/arms-d20/log.txt 2>&1
# The oracle η refreshed every 25 steps instead of 200 (at 200 its η* is 0.19 nats stale on average):
python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-d20-oracle25 dim=20 runs=10 steps=1500 eval_every=150 \
  refresh=25 'arms=[eta-mine,dv-mine,eta-mine/oracle]' > experiments/mi_gaussian/results/arms-d20-oracle25/log.txt 2>&1
# d = 10, the same six arms and size, the oracle refreshed every 25 steps (the default refresh):
python -m experiments.mi_gaussian.arms --out experiments/mi_gaussian/results/arms-d10 dim=10 runs=10 steps=1500 eval_every=150 \
  'arms=[eta-mine,dv-mine,eta-mine/oracle,dv-mine/noise,eta-mine@N,dv-mine@N]' > experiments/mi_gaussian/results/arms-d10/log.txt 2>&1
# The full design, every arm at 20 runs, d = 20 and d = 10: arms-full.sh
