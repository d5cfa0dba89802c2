"""``python -m experiments.mi_gaussian``: see :mod:`experiments.mi_gaussian.benchmark`."""

from experiments.mi_gaussian.benchmark import main

main()
