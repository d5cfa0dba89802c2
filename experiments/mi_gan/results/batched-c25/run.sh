#!/bin/sh
# 10 paired seeds of η-MINE, DV-MINE and the unconditional GAN, 25-way code, to 50,000 generator steps,
# in one process (python -m experiments.mi_gan.batched). Checkpointed every 1,000 steps
# (checkpoint.pt, not committed): the same command continues the run where it stopped.
# results.json / results.md are rewritten at every checkpoint; log.txt is the run's output.
cd "$(dirname "$0")/../../../.." # the project root; PYTHON defaults to its .venv (make venv)
exec nice -n 19 "${PYTHON:-.venv/bin/python}" -m experiments.mi_gan.batched 'estimators=[eta-mine,dv-mine,none]' runs=10 steps=50000 \
  eval_every=250 n_codes=25 threads=1 out=experiments/mi_gan/results/batched-c25 >> experiments/mi_gan/results/batched-c25/log.txt 2>&1
