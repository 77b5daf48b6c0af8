"""`python -m blocks.train ...`: the training command line (blocks.training.cli), also `sandbox train ...`."""

import sys

from blocks.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
