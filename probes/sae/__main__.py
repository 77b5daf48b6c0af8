"""`python -m probes.sae ...`: the probe script of this package (probes/scripts/sae.py)."""

import sys

from probes.scripts.sae import main

sys.argv[0] = "python -m probes.sae"  # argparse names the program after it
main()
