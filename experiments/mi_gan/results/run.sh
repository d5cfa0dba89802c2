#!/bin/sh
# The measured comparison in experiments/mi_gan/README.md: 3 estimators x 3 seeds x 6,000 generator steps,
# all nine runs in parallel processes of one thread each.
cd "$(dirname "$0")/../../.."
exec nice -n 10 python -m experiments.mi_gan 'estimators=[eta-mine,dv-mine,none]' runs=3 seed=0 \
  steps=6000 eval_every=250 'snapshots=[500,1000,2000,4000,6000]' jobs=9 threads=1 out=experiments/mi_gan/results
