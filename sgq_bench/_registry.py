"""Typed, lazy plugin registries filled from entry points (``sgq_bench.<kind>``) and in-process calls.

Why lazy: importing a plugin can be slow or broken, so discovery only reads the installed
distributions' metadata (names, ``module:attr`` references, distribution name and version) and a plugin
is imported the first time something asks for it. A plugin that fails to import, that is not the kind
of object its group promises, or whose name two distributions claim, is reported once, by name, with
the reason; it never breaks ``sgq-bench list`` nor a run that does not use it.

Why typed: each kind names the base class (or, for models, the callable contract) its plugins must
satisfy, so a wrong object is a one-line error naming the plugin and its distribution, not a
traceback deep inside a training loop.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any, Generic, TypeVar

from sgq_bench.errors import UsageError, did_you_mean

T = TypeVar("T")

KINDS = ("quantizers", "objectives", "models", "datasets", "explainers", "metrics", "deploy_backends")

# Which sgq_bench._base base class each kind's plugins subclass (models are plain factories).
_BASES = {
    "quantizers": "Quantizer",
    "objectives": "Objective",
    "datasets": "Dataset",
    "explainers": "Explainer",
    "metrics": "Metric",
    "deploy_backends": "DeployBackend",
}


NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")
NAME_MAX = 64
NAME_RULE = (f"expected at most {NAME_MAX} lowercase letters, digits, '_', '.' or '-', starting with a letter "
             "or digit, without spaces, '/' or '..'")


def name_problem(name: Any) -> str | None:
    """Why ``name`` breaks the one name grammar, or None when it is a valid name."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if len(name) > NAME_MAX:
        return f"is {len(name)} characters long"
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        return "is invalid"
    return None


def check_name(kind: str, name: Any) -> str:
    """``name`` if it follows the one grammar for every registry, method, dataset, metric and suite name.

    Why one grammar, checked wherever a name enters (entry points, ``register``, suite files): names
    become folder and file names (checkpoints, figures, run folders), so ``../x`` or ``a/b`` would write
    outside the folder meant. Raises a one-line UsageError naming the kind and the name.
    """
    problem = name_problem(name)
    if problem:
        raise UsageError(f"{kind} name {name!r} {problem}; {NAME_RULE}")
    return name


@dataclass
class Entry:
    """One registered name: a loaded object or a lazy ``module:attr`` reference, with its provenance.

    ``distribution`` and ``version`` name the installed package that provides the plugin (for an
    in-process registration: the distribution owning the object's module when there is one, else its
    top-level module name and an empty version). Result rows copy them so every number says which
    plugin release produced it. ``error`` is set once loading failed (or the name is contested) and
    is then reused instead of importing again.
    """

    name: str
    target: Any  # str "module:attr" until loaded
    distribution: str = "__main__"
    version: str = ""
    error: str | None = None
    claimants: tuple[str, ...] = ()  # "dist (ref)" of every distribution claiming this name, if > 1
    in_process: bool = False  # registered by a call, not discovered from an entry point

    @property
    def loaded(self) -> bool:
        return not isinstance(self.target, str) and self.error is None

    @property
    def reference(self) -> str:
        """``module:attr`` of the plugin (also for objects registered in-process)."""
        if isinstance(self.target, str):
            return self.target
        module = getattr(self.target, "__module__", "?")
        return f"{module}:{getattr(self.target, '__qualname__', type(self.target).__name__)}"

    def provenance(self) -> dict[str, str]:
        """``{"name", "distribution", "version"}``: what a result row records about this plugin."""
        return {"name": self.name, "distribution": self.distribution, "version": self.version}


def _load_ref(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    obj = importlib.import_module(module_name.strip())
    for part in attr.strip().split(".") if attr.strip() else []:
        obj = getattr(obj, part)
    return obj


def describe(obj: Any) -> str:
    """First line of an object's ``description`` attribute or docstring."""
    text = getattr(obj, "description", None) or (obj.__doc__ or "")
    return text.strip().splitlines()[0] if text.strip() else ""


@lru_cache(maxsize=1)
def _module_distributions() -> dict[str, list[str]]:
    """Top-level module -> distributions providing it (read once; metadata only, no imports)."""
    try:
        return metadata.packages_distributions()
    except Exception:  # pragma: no cover - broken metadata of an unrelated package
        return {}


def _owner_of(obj: Any) -> tuple[str, str]:
    """(distribution, version) of the package defining ``obj``; (top-level module, "") if not installed."""
    top = (getattr(obj, "__module__", None) or "__main__").split(".")[0]
    for dist in _module_distributions().get(top, []):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            continue
    return top, ""


def check_kind(kind: str, obj: Any) -> str | None:
    """Why ``obj`` cannot serve as a ``kind`` plugin, or None when it can.

    Quantizers, objectives, datasets, explainers and metrics are subclasses of the matching
    ``sgq_bench._base`` class (the harness instantiates them with the declared params); models are
    factories ``fn(dataset) -> nn.Module``.
    """
    if kind == "models" or kind not in _BASES:
        return None if callable(obj) else f"is {type(obj).__name__}, expected a callable fn(dataset) -> nn.Module"
    from sgq_bench import _base as api  # late: keeps discovery free of torch until a plugin is used

    base = getattr(api, _BASES[kind])
    if isinstance(obj, type) and issubclass(obj, base):
        return None
    what = obj.__name__ if isinstance(obj, type) else f"a {type(obj).__name__} instance"
    return f"is {what}, expected a subclass of sgq_bench._base.{base.__name__}"


@dataclass
class Registry(Generic[T]):
    """Name -> plugin for one kind. Entry points are discovered on first use, imported on first get.

    The registry never imports a plugin during discovery; ``get`` imports one, ``items`` imports all
    (for ``sgq-bench list`` and registry-parametrised tests) and keeps broken ones with their error.
    An unusable plugin is reported once per process: by the error ``get`` raises when something asks
    for it, or by one ``RuntimeWarning`` when it is met while enumerating (``items``/``usable``).
    """

    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)
    _discovered: bool = False
    _reported: set[str] = field(default_factory=set)

    @property
    def group(self) -> str:
        """The entry-point group a package declares its plugins of this kind in."""
        return f"sgq_bench.{self.kind}"

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        found: dict[str, Entry] = {}
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else ""
            prev = found.get(ep.name)
            if prev is None:
                found[ep.name] = Entry(ep.name, ep.value, dist, version)
                problem = name_problem(ep.name)
                if problem:  # reported as broken and never imported: the name would become a path
                    found[ep.name].error = f"{self.kind[:-1]} name {ep.name!r} {problem}; {NAME_RULE}"
            elif prev.distribution != dist or prev.target != ep.value:
                # A contested name poisons only itself: everything else stays usable.
                claim = f"{dist!r} ({ep.value})"
                claimants = prev.claimants or (f"{prev.distribution!r} ({prev.target})",)
                prev.claimants = (*claimants, claim)
                prev.error = (
                    f"{self.kind} name {ep.name!r} is claimed by two plugins: distribution "
                    f"{' and distribution '.join(prev.claimants)}; uninstall one of them"
                )
        for name, entry in self._entries.items():  # in-process registrations made before discovery
            if name in found and found[name].reference != entry.reference:
                raise UsageError(
                    f"{self.kind} name {name!r} is registered in-process by {entry.distribution!r} and also "
                    f"installed by distribution {found[name].distribution!r}; pick another name"
                )
            found[name] = entry
        self._entries = found

    def refresh(self) -> None:
        """Forget discovered entry points (keeping in-process registrations); rescan on next use.

        Why: a test or notebook that ``pip install``-s a plugin mid-process wants to see it.
        """
        importlib.invalidate_caches()
        local = {n: e for n, e in self._entries.items() if e.in_process}
        self._entries = {}
        self._discovered = False
        self._reported.clear()
        self._discover()
        for name, entry in local.items():
            self._entries.setdefault(name, entry)

    def register(self, name: str | None = None, obj: T | None = None, *, replace: bool = False) -> Any:
        """Register ``obj`` under ``name``, or return a decorator that does; for notebooks and tests.

        ``name`` defaults to the object's ``name`` attribute (or ``__name__``). Taking a name that an
        installed plugin already holds is an error unless ``replace=True``, so a notebook cannot
        silently shadow a published plugin. Returns ``obj`` unchanged.
        """

        def _do(o: T) -> T:
            key = name or getattr(o, "name", "") or getattr(o, "__name__", "")
            problem = name_problem(key)
            if problem:
                raise UsageError(f"{self.kind}: cannot register {o!r} under {key!r}: the name {problem}; {NAME_RULE}")
            problem = check_kind(self.kind, o)
            if problem:
                raise UsageError(f"{self.kind} plugin {key!r} {problem}")
            self._discover()
            old = self._entries.get(key)
            if old is not None and not replace and old.target is not o:
                raise UsageError(
                    f"{self.kind} name {key!r} is already registered by distribution {old.distribution!r}; "
                    "pass replace=True to override it"
                )
            dist, version = _owner_of(o)
            self._entries[key] = Entry(key, o, distribution=dist, version=version, in_process=True)
            self._reported.discard(key)
            return o

        if obj is None and name is not None and not isinstance(name, str):  # used as @registry.register
            obj, name = name, None
        return _do(obj) if obj is not None else _do

    def unregister(self, name: str) -> None:
        """Remove ``name`` (no error if absent); the next discovery does not bring entry points back."""
        self._discover()
        self._entries.pop(name, None)
        self._reported.discard(name)

    def _report(self, entry: Entry, warn: bool) -> None:
        """Warn about an unusable plugin the first time only; ``warn=False`` marks it reported silently."""
        if entry.name in self._reported:
            return
        self._reported.add(entry.name)
        if warn:
            warnings.warn(
                f"sgq-bench: {self.kind} plugin {entry.name!r} from distribution {entry.distribution!r} is "
                f"unusable ({entry.error}); it is skipped",
                RuntimeWarning,
                stacklevel=4,
            )

    def _load(self, entry: Entry, warn: bool) -> T:
        if entry.error is None and isinstance(entry.target, str):
            try:
                obj = _load_ref(entry.target)
            except Exception as exc:  # a broken plugin must not take the others down
                entry.error = f"failed to import {entry.target}: {type(exc).__name__}: {exc}"
            else:
                problem = check_kind(self.kind, obj)
                if problem:
                    entry.error = f"{entry.target} {problem}"
                else:
                    entry.target = obj
        if entry.error is not None:
            self._report(entry, warn)
            raise UsageError(
                f"{self.kind} plugin {entry.name!r} from distribution {entry.distribution!r} is unusable: "
                f"{entry.error}"
            )
        return entry.target

    def get(self, name: str) -> T:
        """The plugin named ``name``; an unknown name raises a one-line UsageError with suggestions."""
        self._discover()
        if name not in self._entries:
            raise UsageError(f"unknown {self.kind[:-1]} {name!r}.{did_you_mean(name, self._entries)}")
        # The error raised here is the report: no warning on top of it.
        return self._load(self._entries[name], warn=False)

    def entry(self, name: str) -> Entry:
        """The loaded entry (object plus provenance) of ``name``; errors like ``get``."""
        self.get(name)
        return self._entries[name]

    def peek(self, name: str) -> Entry | None:
        """The entry of ``name`` without importing it (None if unknown): for provenance and listings."""
        self._discover()
        return self._entries.get(name)

    def names(self) -> list[str]:
        """Every registered name, broken ones included (nothing is imported)."""
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self, warn: bool = True) -> list[tuple[str, T | None, Entry]]:
        """(name, object or None if unusable, entry) for every name; imports all, keeps broken ones.

        ``warn=False`` is for callers that show ``entry.error`` themselves (``sgq-bench list``), so a
        broken plugin is reported once, not twice.
        """
        out = []
        for name in self.names():
            entry = self._entries[name]
            try:
                obj = self._load(entry, warn=warn)
            except UsageError:
                obj = None
            out.append((name, obj, entry))
        return out

    def usable(self) -> list[str]:
        """Names whose plugin imports and has the right type (broken ones are reported once)."""
        return [name for name, obj, _ in self.items() if obj is not None]


quantizers: Registry = Registry("quantizers")
objectives: Registry = Registry("objectives")
models: Registry[Callable[..., Any]] = Registry("models")
datasets: Registry = Registry("datasets")
explainers: Registry = Registry("explainers")
metrics: Registry = Registry("metrics")
deploy_backends: Registry = Registry("deploy_backends")

REGISTRIES: dict[str, Registry] = {
    "quantizers": quantizers,
    "objectives": objectives,
    "models": models,
    "datasets": datasets,
    "explainers": explainers,
    "metrics": metrics,
    "deploy_backends": deploy_backends,
}


def registry(kind: str) -> Registry:
    """The registry for ``kind`` (one of KINDS)."""
    if kind not in REGISTRIES:
        raise UsageError(f"unknown plugin kind {kind!r}.{did_you_mean(kind, REGISTRIES)}")
    return REGISTRIES[kind]


def refresh() -> None:
    """Rescan entry points of every kind (after installing or removing a plugin in this process)."""
    for reg in REGISTRIES.values():
        reg.refresh()
