"""Typed, lazy plugin registries filled from entry points (``sgq_bench.<kind>``) and in-process calls.

Why lazy: importing a plugin can be slow or broken; we only import what a run actually uses, and a
plugin that fails to import is reported once, by name, without breaking the others.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

from sgq_bench.errors import UsageError, did_you_mean

T = TypeVar("T")

KINDS = ("quantizers", "objectives", "models", "datasets", "explainers", "metrics")


@dataclass
class Entry:
    """One registered name: a loaded object or a lazy ``module:attr`` reference."""

    name: str
    target: Any  # str "module:attr" until loaded
    distribution: str = "__main__"
    version: str = ""
    error: str | None = None

    @property
    def loaded(self) -> bool:
        return not isinstance(self.target, str)


def _load_ref(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def describe(obj: Any) -> str:
    """First line of an object's ``description`` attribute or docstring."""
    text = getattr(obj, "description", None) or (obj.__doc__ or "")
    return text.strip().splitlines()[0] if text.strip() else ""


@dataclass
class Registry(Generic[T]):
    """Name -> plugin for one kind. Entry points are discovered on first use, imported on first get."""

    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)
    _discovered: bool = False
    _reported: set = field(default_factory=set)

    @property
    def group(self) -> str:
        return f"sgq_bench.{self.kind}"

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        found: dict[str, Entry] = {}
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else ""
            if ep.name in found and found[ep.name].target != ep.value:
                other = found[ep.name].distribution
                raise UsageError(
                    f"{self.kind} name {ep.name!r} is claimed by two plugins: distribution {other!r} "
                    f"({found[ep.name].target}) and {dist!r} ({ep.value}); uninstall one of them"
                )
            found[ep.name] = Entry(ep.name, ep.value, dist, version)
        # In-process registrations made before discovery win over nothing but must not be lost.
        for name, entry in self._entries.items():
            if name in found and found[name].target != entry.target:
                raise UsageError(
                    f"{self.kind} name {name!r} is registered in-process and also by distribution "
                    f"{found[name].distribution!r}; pick another name"
                )
            found[name] = entry
        self._entries = found

    def register(self, name: str, obj: T | None = None, *, replace: bool = False) -> Any:
        """Register ``obj`` under ``name`` (or use as a decorator). For notebooks and tests."""

        def _do(o: T) -> T:
            self._discover()
            if name in self._entries and not replace and self._entries[name].target is not o:
                raise UsageError(
                    f"{self.kind} name {name!r} is already registered by {self._entries[name].distribution!r};"
                    " pass replace=True to override"
                )
            module = getattr(o, "__module__", "__main__") or "__main__"
            self._entries[name] = Entry(name, o, distribution=module.split(".")[0])
            return o

        return _do(obj) if obj is not None else _do

    def unregister(self, name: str) -> None:
        self._discover()
        self._entries.pop(name, None)

    def _load(self, entry: Entry) -> T:
        if not entry.loaded:
            try:
                entry.target = _load_ref(entry.target)
            except Exception as exc:  # a broken plugin must not take the others down
                entry.error = f"{type(exc).__name__}: {exc}"
                if entry.name not in self._reported:
                    self._reported.add(entry.name)
                    warnings.warn(
                        f"sgq-bench: {self.kind} plugin {entry.name!r} from {entry.distribution!r} failed to "
                        f"import ({entry.error}); it is skipped",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                raise UsageError(
                    f"{self.kind} plugin {entry.name!r} from distribution {entry.distribution!r} failed to "
                    f"import: {entry.error}"
                ) from exc
        return entry.target

    def get(self, name: str) -> T:
        """The plugin named ``name``; an unknown name raises a one-line UsageError with suggestions."""
        self._discover()
        if name not in self._entries:
            raise UsageError(f"unknown {self.kind[:-1]} {name!r}.{did_you_mean(name, self._entries)}")
        return self._load(self._entries[name])

    def entry(self, name: str) -> Entry:
        self.get(name)
        return self._entries[name]

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T | None, Entry]]:
        """(name, object or None if broken, entry) for every registered name; broken ones are kept."""
        out = []
        for name in self.names():
            entry = self._entries[name]
            try:
                obj = self._load(entry)
            except UsageError:
                obj = None
            out.append((name, obj, entry))
        return out


quantizers: Registry = Registry("quantizers")
objectives: Registry = Registry("objectives")
models: Registry[Callable[..., Any]] = Registry("models")
datasets: Registry = Registry("datasets")
explainers: Registry = Registry("explainers")
metrics: Registry = Registry("metrics")

REGISTRIES: dict[str, Registry] = {
    "quantizers": quantizers,
    "objectives": objectives,
    "models": models,
    "datasets": datasets,
    "explainers": explainers,
    "metrics": metrics,
}


def registry(kind: str) -> Registry:
    """The registry for ``kind`` (one of KINDS)."""
    if kind not in REGISTRIES:
        raise UsageError(f"unknown plugin kind {kind!r}.{did_you_mean(kind, REGISTRIES)}")
    return REGISTRIES[kind]
