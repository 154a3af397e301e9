"""Errors a user can act on.

Every error this package raises for bad input or a damaged store derives from
:class:`AmnesiaError`. Its message names the input, says what is wrong and what to do;
the CLI prints it without a traceback and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def fmt_steps(steps: Sequence[int], limit: int = 20) -> str:
    """``1, 2, 3 (and 7 more)``: step numbers for a one-line message."""
    shown = ", ".join(str(s) for s in steps[:limit])
    return shown + (f" (and {len(steps) - limit} more)" if len(steps) > limit else "")


class AmnesiaError(Exception):
    """Base class: a problem the user can fix (bad input, damaged store, missing key)."""


class StoreError(AmnesiaError):
    """The delta store cannot be opened, read or written."""


class ChunkCorruptedError(StoreError):
    """A chunk's bytes do not match its recorded size, digest or AES-GCM tag, or fail authentication."""


class ManifestFormatError(StoreError):
    """A manifest is unreadable or of a format this version does not understand."""


class UnknownStepsError(StoreError):
    """Some requested steps were never recorded in this store; ``.steps`` lists them."""

    def __init__(self, steps: Sequence[int], url: str) -> None:
        self.steps = sorted(steps)
        super().__init__(
            f"{len(self.steps)} step(s) are not in the delta store {url}: {fmt_steps(self.steps)}. "
            "They were never recorded (or the writer crashed before committing them); check that the "
            "record index and this store come from the same training run."
        )


class PurgedStepsError(StoreError):
    """Some requested steps were purged: their deltas no longer exist; ``.steps`` lists them."""

    def __init__(self, steps: Sequence[int], url: str) -> None:
        self.steps = sorted(steps)
        super().__init__(
            f"{len(self.steps)} step(s) of the delta store {url} were purged and their deltas deleted: "
            f"{fmt_steps(self.steps)}. They cannot be rolled back; leave them out (a model version "
            "that already rolled them back does not need them) or retrain."
        )


class IndexFormatError(AmnesiaError):
    """A record index file is unreadable, corrupt, or of a newer format than this version reads."""


class RecordKeyError(AmnesiaError):
    """The record-hashing key is missing, malformed, or not the one an index was built with."""


class UnknownRecordsError(AmnesiaError):
    """Some requested record ids are not in the index; ``.unknown`` lists them."""

    def __init__(self, unknown: Iterable[str], *, where: str = "the record index", total: int | None = None):
        self.unknown = list(unknown)
        shown = ", ".join(repr(u) for u in self.unknown[:20])
        more = f" (and {len(self.unknown) - 20} more)" if len(self.unknown) > 20 else ""
        of = f" of {total}" if total is not None else ""
        super().__init__(
            f"{len(self.unknown)}{of} record id(s) are not in {where}: {shown}{more}. "
            "Check the ids (list valid ones with `mlflow-amnesia records --model NAME`) "
            "and that this is the model version that trained on them."
        )


class InputError(AmnesiaError):
    """A user-supplied file, option or name is wrong."""


class ForgetConflictError(AmnesiaError):
    """Another forget of the same model registered a child of the same parent first.

    Nothing of this forget stays registered; re-running it builds on the other's version.
    """


class TrackingServerError(AmnesiaError):
    """The MLflow tracking (or registry) server cannot be reached."""


class PurgedVersionError(AmnesiaError):
    """The model version was purged (GDPR erasure): its weights were deleted for good."""
