"""The MLflow layer: the flavor (:mod:`.flavor`), the registry (:mod:`.registry`, :mod:`.concurrency`),
the tracking store (:mod:`.tracking`), runs and where their phases live (:mod:`.runs`), artifact
repositories (:mod:`.artifacts`) and the audit's shadow-model cache (:mod:`.shadow_cache`).

The only layer (with the jobs above it) that talks to MLflow; ``import mlflow`` inside it is the
MLflow package, never this one.
"""
