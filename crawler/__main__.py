"""`python -m crawler` runs the same entry point as the `crystalline` console script."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
