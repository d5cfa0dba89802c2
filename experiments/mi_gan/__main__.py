"""``python -m experiments.mi_gan``: see :mod:`experiments.mi_gan.gan`."""

from experiments.mi_gan.gan import main

main()
