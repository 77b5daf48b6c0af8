"""`python -m probes.information_flow ...`: the probe script of this package (probes/scripts/information_flow.py)."""

from probes.scripts.information_flow import main

main()
