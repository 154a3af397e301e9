"""One small name registry for every pluggable concept: methods, repairs, codecs, data sets,
architectures.

A :class:`Registry` maps names to objects. Registering a name twice is refused (a plugin that
shadowed a built-in would silently change what ``--method amnesiac`` does), a lookup of an
unknown name raises :class:`~mlflow_amnesia.errors.InputError` naming the choices, and the CLI
builds its ``click.Choice`` lists from :meth:`Registry.names`. An optional entry-point group
lets installed packages add names; they are loaded only when a name is looked up or listed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import InputError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Names to objects of one kind (``what``: "unlearning method", "codec"...).

    ``unknown`` formats the error of a failed lookup with ``{what}``, ``{name!r}`` and
    ``{choices}`` (the names, comma-separated); ``entry_point_group`` names an entry-point group
    whose entries are registered (loaded) the first time the names are needed.
    """

    def __init__(
        self,
        what: str,
        *,
        unknown: str = "unknown {what} {name!r}; choose one of {choices}",
        entry_point_group: str | None = None,
        normalize: Callable[[str], str] = str,
    ) -> None:
        self.what = what
        self._unknown = unknown
        self._group = entry_point_group
        self._normalize = normalize
        self._items: dict[str, T] = {}
        self._loaded_entry_points = entry_point_group is None

    def register(self, name: str, obj: T) -> T:
        """Add ``obj`` under ``name``; a name already taken is an :class:`InputError`. Returns ``obj``."""
        key = self._normalize(name)
        if not isinstance(key, str) or not key:
            raise InputError(f"a {self.what} needs a non-empty name, got {name!r}")
        if key in self._items:
            raise InputError(
                f"a {self.what} named {key!r} is registered already ({_describe(self._items[key])}); "
                f"give {_describe(obj)} another name"
            )
        self._items[key] = obj
        return obj

    def get(self, name: str) -> T:
        """The object registered as ``name``; InputError naming the choices when there is none."""
        key = self._normalize(name) if isinstance(name, str) else name
        if isinstance(key, str) and key in self._items:
            return self._items[key]
        self._load_entry_points()
        if isinstance(key, str) and key in self._items:
            return self._items[key]
        raise InputError(self._unknown.format(what=self.what, name=name, choices=", ".join(self.names())))

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        self._load_entry_points()
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalize(name) in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=str(self._group)):
            if self._normalize(ep.name) not in self._items:
                self.register(ep.name, ep.load())

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, names={list(self._items)})"


def _describe(obj: object) -> str:
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{mod}.{qual}" if mod and qual else repr(obj)
