"""The probe scripts: `sandbox probe NAME ...` or `python -m probes.scripts.NAME ...`, one per analysis module."""
