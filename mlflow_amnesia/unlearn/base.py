"""The pluggable surface of unlearning methods (Opacus-style: tiny base class + name registry).

A method receives a :class:`ForgetContext` (the parent version, already loaded, the records to
forget as keyed hashes, the steps that saw them) and changes ``ctx.model.module`` in place,
returning what it did. It must not register anything: `forget` does that once the method has
succeeded, so a failing method leaves the registry untouched.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..names import Registry
from ..recording.phase import Segment
from ..version.model import AmnesiaModel

OptionsT = TypeVar("OptionsT", bound="MethodOptions")


@dataclass(frozen=True)
class MethodOptions:
    """The options of one method (``forget --epochs``, ``--copies``...), typed; subclasses add fields.

    :meth:`of` takes a method's own options, another method's, or a plain mapping of every
    method's options (``{"repair": ..., "epochs": ..., "copies": ...}``) and keeps this method's
    fields: a request carries every option, each method reads its own.
    """

    @classmethod
    def of(cls: type[OptionsT], value: MethodOptions | Mapping[str, Any] | None) -> OptionsT:
        if isinstance(value, cls):
            return value
        given: Mapping[str, Any] = asdict(value) if isinstance(value, MethodOptions) else dict(value or {})
        return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})


@dataclass(frozen=True)
class AllOptions(MethodOptions):
    """Every method's options at once: what ``forget`` hands the method it runs (as a request holds them)."""

    repair: str | None = None  # amnesiac: none | finetune | replay (None: none)
    repair_epochs: int | None = None  # amnesiac + finetune repair (None: 1)
    repair_lr: float | None = None  # amnesiac repairs (None: the recipe's)
    epochs: int | None = None  # relabel, finetune, retrain (None: the method's default)
    copies: int | None = None  # relabel (None: 4)
    cls: str | None = None  # relabel: the class forgotten (one relabelled copy each)


@dataclass
class ForgetContext:
    model: AmnesiaModel  # a private copy of the parent: methods modify it in place
    key: bytes
    target_hashes: np.ndarray  # (n, keys.HASH_BYTES) keyed hashes of the records to forget now
    steps: np.ndarray  # steps that saw them and are not rolled back yet (sorted int64)
    load_records: Callable[[], Any]  # rebuilds the training data on demand (lazy: rollback needs none)
    phase_base: Callable[[], str]  # base URL for a new recorded phase of this forget run
    run_id: str
    #: the request's method options (:class:`AllOptions`, a method's own, or a plain mapping);
    #: each method reads its own with ``TheirOptions.of(ctx.options)``
    options: MethodOptions | Mapping[str, Any] = field(default_factory=AllOptions)
    # Called with 0 right after a rollback and with k after the k-th epoch a method (or its
    # repair) trains, while ``model.module`` holds the weights of that moment: forget's per-epoch
    # metrics. Methods call it through :meth:`epoch_done`; None: nobody is listening.
    on_epoch: Callable[[int], None] | None = None

    @property
    def next_step(self) -> int:
        return self.model.next_step

    def epoch_done(self, epoch: int) -> None:
        """Report that the model now holds its weights after ``epoch`` (0: the rollback)."""
        if self.on_epoch is not None:
            self.on_epoch(int(epoch))

    def epoch_hook(self) -> Callable[[Any], None] | None:
        """``record_phase``'s ``on_epoch`` reporting each trained epoch (1-based), or None."""
        return None if self.on_epoch is None else (lambda r: self.epoch_done(r.epoch + 1))


@dataclass
class MethodResult:
    rolled_back: np.ndarray  # steps whose deltas were subtracted (may be empty)
    new_segments: list[Segment] = field(default_factory=list)  # appended after the parent's segments
    # A method whose result no longer descends from the parent's recorded steps (retrain from the
    # initial weights) sets this: the child's segments become exactly these, nothing rolled back.
    replace_segments: list[Segment] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    summary: str = ""


class UnlearningMethod(abc.ABC):
    """Base class: set ``name`` (and ``Options``, the dataclass of its options) and implement :meth:`apply`."""

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_data: ClassVar[bool] = False  # True when the method trains on the data set
    rolls_back: ClassVar[bool] = False  # True when it subtracts recorded steps (the step-share check applies)

    @abc.abstractmethod
    def apply(self, ctx: ForgetContext) -> MethodResult:  # pragma: no cover - interface
        ...


#: Every ``forget --method NAME``: each method module registers its class here (``@register_method``).
METHODS: Registry[type[UnlearningMethod]] = Registry(
    "unlearning method", unknown="unknown unlearning method {name!r}; available: {choices}"
)


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    """Class decorator: make a method available to ``forget --method NAME`` (a name taken is refused)."""
    METHODS.register(cls.name, cls)
    return cls


def available_methods() -> list[str]:
    return sorted(METHODS.names())


def get_method(name: str) -> UnlearningMethod:
    return METHODS.get(name)()


class Repair(abc.ABC):
    """What restores accuracy after an amnesiac rollback (``forget --repair NAME``).

    :meth:`check` and :meth:`prepare` run before the rollback, so a repair that cannot run (bad
    options, data that cannot be rebuilt, batches that cannot be planned) fails the forget with
    nothing changed; :meth:`run` runs after it, on the rolled-back model.
    """

    name: ClassVar[str]
    needs_data: ClassVar[bool] = True  # the retained training data is rebuilt for it

    def check(self, ctx: ForgetContext) -> None:  # noqa: B027 - a hook: nothing to refuse by default
        """Refuse options this repair cannot run with (before anything is read)."""

    def prepare(self, ctx: ForgetContext, data: Any) -> Any:
        """What :meth:`run` needs, computed before the rollback (reads only)."""
        return None

    @abc.abstractmethod
    def run(self, ctx: ForgetContext, data: Any, prepared: Any) -> RepairResult:  # pragma: no cover - interface
        ...


@dataclass
class RepairResult:
    segments: list[Segment] = field(default_factory=list)  # recorded phases the repair trained
    metrics: dict[str, float] = field(default_factory=dict)
    summary: str = ""  # appended to the method's summary (", then ...")


#: Every ``forget --repair NAME``; the amnesiac method registers ``none``, ``finetune``, ``replay``.
REPAIRS: Registry[Repair] = Registry("repair", unknown="unknown repair {name!r}; available: {choices}")


def check_repair(repair: str | None) -> str:
    """``repair`` (None: ``none``) if it names a registered repair, else InputError naming them."""
    r = repair or "none"
    REPAIRS.get(r)
    return r
