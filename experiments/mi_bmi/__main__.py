"""``python -m experiments.mi_bmi``: see :mod:`experiments.mi_bmi.benchmark`."""
import sys

from experiments.mi_bmi import benchmark


def main(argv: list[str] | None = None) -> int:
    benchmark.main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
