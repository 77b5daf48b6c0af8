"""`python -m probes.information_flow ...`: the probe script of this package (probes/scripts/information_flow.py)."""

import sys

from probes.scripts.information_flow import main

sys.argv[0] = "python -m probes.information_flow"  # argparse names the program after it
main()
