"""Record every optimizer step's state delta while the user's own loop trains.

:class:`Recorder` (:mod:`.recorder`) wraps a loop it does not own; the concepts it is built from
have a module each: the recorded state of a model (:mod:`.layout`), the optimizer's
hyper-parameters (:mod:`.optimizer`), handing deltas to the store off the training thread
(:mod:`.staging`), gathering every rank's batch under DDP (:mod:`.ddp`) and what it needs from
the store and the index builder (:mod:`.protocols`).
"""

from .layout import float_state, integer_state_names, state_layout, unwrap
from .optimizer import optimizer_meta, step_meta
from .protocols import DeltaSink, IndexSink
from .recorder import Recorder

__all__ = [
    "DeltaSink",
    "IndexSink",
    "Recorder",
    "float_state",
    "integer_state_names",
    "optimizer_meta",
    "state_layout",
    "step_meta",
    "unwrap",
]
