"""`python -m probes.circuit ...`: the probe script of this package (probes/scripts/circuit.py)."""

import sys

from probes.scripts.circuit import main

sys.argv[0] = "python -m probes.circuit"  # argparse names the program after it
main()
