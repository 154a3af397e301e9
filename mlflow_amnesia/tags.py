"""Every ``amnesia.*`` tag name, one constant each: a contract with users' dashboards and the UI.

Stored tags are read back by later commands (``lineage``, ``purge``, a re-run ``forget``) and by
people filtering in the MLflow UI, so a name never changes once written. Code refers to these
constants only, never to the strings.
"""

from __future__ import annotations

# ---- tags of a registered model version -------------------------------------------------------

#: The version a forget started from (its parent); absent on a version ``train`` registered.
TAG_PARENT = "amnesia.parent_version"
#: ``train`` or the unlearning method that made the version (``amnesiac``, ``retrain``...).
TAG_METHOD = "amnesia.method"
#: How many records the forget that made the version removed.
TAG_N_RECORDS = "amnesia.n_records"
#: How many records are forgotten along the version's whole lineage.
TAG_N_RECORDS_TOTAL = "amnesia.n_records_total"
#: How many recorded steps the forget rolled back.
TAG_STEPS = "amnesia.steps_rolled_back"
#: Steps ``train`` recorded.
TAG_STEPS_TOTAL = "amnesia.steps_total"
#: A keyed hash of the forget request's ids (never the ids); also a tag of the forget run.
TAG_REQUEST = "amnesia.forget_request"
#: Set on a parent once a forget registered its child: the child's version number.
TAG_SUPERSEDED = "amnesia.superseded_by"
#: The repair after an amnesiac rollback (``none``, ``finetune``, ``replay``).
TAG_REPAIR = "amnesia.repair"
#: The flavor's format version the version was written with (``"1"``). The tag's name says
#: "flavor" for historical reasons; its value is the format version of the ``mlflow_amnesia`` flavor.
TAG_FLAVOR_FORMAT = "amnesia.flavor"
#: The delta codec of the recorded steps (also a tag of the train run).
TAG_CODEC = "amnesia.codec"
#: The data set spec and the architecture ``train`` used.
TAG_DATASET = "amnesia.dataset"
TAG_ARCH = "amnesia.arch"
#: ISO time a purge completed, and what it deleted (the purge's last write).
TAG_PURGED = "amnesia.purged"
#: ISO time a purge began (stays after it completes).
TAG_PURGE_STARTED = "amnesia.purge_started"
#: The privacy audit's verdict on the version: ``pass``, ``fail``, ``inconclusive`` (a forget's
#: child) or ``n/a`` (a trained version); the rule is :mod:`mlflow_amnesia.audit.verdict`'s.
TAG_VERDICT = "amnesia.audit.verdict"
#: The verdict's one-line reason, with the figures it rests on (no record ids).
TAG_VERDICT_REASON = "amnesia.audit.verdict_reason"
#: Records ``train`` left out because the erasure ledger holds deletion requests for them (a count;
#: the request hashes are in the version's ``data/amnesia.json`` history and its description).
TAG_EXCLUDED = "amnesia.excluded_records"

# ---- tags of a registered model --------------------------------------------------------------

#: Set on a registered model once the erasure ledger holds a request for it: where the ledger is
#: (the experiment ``mlflow-amnesia-ledger``, one run per entry).
TAG_LEDGER = "amnesia.ledger"

# ---- tags of a run ---------------------------------------------------------------------------

#: ``train`` or ``forget``: which job the run is.
TAG_ROLE = "amnesia.role"
#: The URL of the delta store the train run recorded into (on a forget run: the phase its method
#: recorded, set before the method writes it).
TAG_STORE = "amnesia.store"
#: The registered model a train (or forget) run registers.
TAG_MODEL_NAME = "amnesia.model_name"
#: On a forget run, set before registering: what its version's description needs (counts and the
#: method's summary, no ids), so a re-run can write it after a kill.
TAG_PLAN = "amnesia.forget_plan"
#: On the run of a forget that lost a registration race: which version won, and that its own was deleted.
TAG_CONFLICT = "amnesia.conflict"
#: On a run of the ``mlflow-amnesia-shadows`` experiment: the cache key of the shadow models it holds.
TAG_SHADOW_KEY = "amnesia.shadow_key"
#: On a run of that experiment holding one member of a shadow pool: the pool's cache key ...
TAG_SHADOW_POOL = "amnesia.shadow_pool"
#: ... and the member's index (0..n-1).
TAG_SHADOW_MEMBER = "amnesia.shadow_member"
#: On a shadow set's or member's run: the deletion requests (keyed hashes, comma-separated) whose
#: records its pool left out; absent: a pool that may hold every record of its data set.
TAG_SHADOW_EXCLUDES = "amnesia.shadow_excludes"
#: On a shadow set's or member's run: the fingerprint of the data set its shadows trained on.
TAG_SHADOW_DATA = "amnesia.shadow_data"
#: On a train or forget run: ``host:pid`` of the process training, so a purge can tell a killed run from a live one.
TAG_OWNER = "amnesia.owner"

# ---- tags of an entry of the erasure ledger (a run of the ``mlflow-amnesia-ledger`` experiment) ---

#: The sha256 of the entry's canonical JSON (its artifact ``entry.json``): its identity.
TAG_LEDGER_ENTRY = "amnesia.ledger.entry"
#: ``request``, ``forgotten``, ``purged`` or ``purged-run``.
TAG_LEDGER_KIND = "amnesia.ledger.kind"
#: The registered model the entry belongs to.
TAG_LEDGER_MODEL = "amnesia.ledger.model"
#: The fingerprint of the data set the request's records belong to (a ledger per data set).
TAG_LEDGER_DATASET = "amnesia.ledger.dataset"

__all__ = [n for n in dir() if n.startswith("TAG_")]
