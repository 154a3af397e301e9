"""Data sets with stable record ids (:mod:`.data`), architectures from a JSON spec (:mod:`.models`)
and the one training loop every recorded phase runs (:mod:`.training`). No MLflow."""
