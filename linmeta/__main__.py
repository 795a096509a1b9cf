"""``python -m linmeta``: the command line (see :mod:`linmeta.front.cli`)."""
import sys

from .front.cli import main

if __name__ == "__main__":
    sys.exit(main())
