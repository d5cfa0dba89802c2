"""``python -m experiments.mi_gaussian``: see :mod:`experiments.mi_gaussian.benchmark`."""
import sys

from experiments.mi_gaussian import benchmark


def main(argv: list[str] | None = None) -> int:
    benchmark.main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
