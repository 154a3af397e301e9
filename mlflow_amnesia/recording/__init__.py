"""The recording engine: every optimizer step's delta, compressed and sealed, and which records it saw.

:mod:`.store` (the DeltaStore: codecs, manifest, chunk files), :mod:`.index` (keyed record hash
<-> steps), :mod:`.recorder` (the Recorder that wraps a training loop), :mod:`.phase` (where a
recorded phase keeps its files; a version's Segment of one) and :mod:`.fs` (URLs, the durable
writer). Below it only the core (errors, keys, crypto, names, progress); no model code, no MLflow.
"""
