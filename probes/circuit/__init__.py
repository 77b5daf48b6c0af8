"""Circuit discovery on any blocks.Transformer: the edge graph, attribution (AtP, EAP, EAP-IG), exact edge
and path patching, composition scores, circuits and their faithfulness. `python -m probes.circuit` runs the script."""
