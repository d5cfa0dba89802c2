"""``python -m experiments.mi_gan``: see :mod:`experiments.mi_gan.gan`."""
import sys

from experiments.mi_gan import gan


def main(argv: list[str] | None = None) -> int:
    gan.main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
