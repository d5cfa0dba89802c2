#!/bin/sh
# Extension of run.sh: the two MI-regularised variants only, 3 seeds x 12,000 generator steps.
cd "$(dirname "$0")/../../.."
exec nice -n 10 python -m experiments.mi_gan 'estimators=[eta-mine,dv-mine]' runs=3 seed=0 \
  steps=12000 eval_every=250 'snapshots=[1000,3000,6000,9000,12000]' jobs=6 threads=1 out=experiments/mi_gan/results/12k
