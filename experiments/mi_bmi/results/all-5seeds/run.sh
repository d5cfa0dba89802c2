#!/bin/sh
# Every BMI task (30), every registered bound, 5 seeds, the default settings (2,000 steps).
# results.json is rewritten after every task/seed; the same command continues, keeping the rows there.
cd "$(dirname "$0")/../../../.." # the project root; PYTHON defaults to its .venv (make venv)
exec nice -n 19 "${PYTHON:-.venv/bin/python}" -m experiments.mi_bmi --out experiments/mi_bmi/results/all-5seeds 'tasks=[all]' seeds=5 \
  >> experiments/mi_bmi/results/all-5seeds/log.txt 2>&1
