"""A method is a named (quantizer, objective, params) triple; the four reference ones are data."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from sgq_bench import _registry
from sgq_bench._base import Objective, Quantizer
from sgq_bench._bits import Bits, method_label
from sgq_bench.errors import UsageError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METHOD_KEYS = ("description", "quantizer", "objective", "quantizer_params", "objective_params")


@dataclass(frozen=True)
class Method:
    """A method: which quantizer and objective, with which parameters (defaults filled in)."""

    name: str
    quantizer: str
    objective: str
    quantizer_params: dict[str, Any] = field(default_factory=dict)
    objective_params: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        # The name becomes part of checkpoint and figure paths: every way of making a Method checks it.
        _registry.check_name("method", self.name)

    def build(self) -> tuple[Quantizer, Objective]:
        """Instantiate (and so validate) the quantizer and objective plugins."""
        q_cls = _registry.quantizers.get(self.quantizer)
        o_cls = _registry.objectives.get(self.objective)
        return q_cls(**self.quantizer_params), o_cls(**self.objective_params)

    def resolved(self) -> Method:
        """The same method with every plugin default written out (what the checkpoint key hashes), except
        the defaults of parameters added after models were published (``Param.added_late``)."""
        q, o = self.build()
        return replace(self, quantizer_params=dict(q.key_config), objective_params=dict(o.key_config))

    def with_params(self, overrides: dict[str, Any]) -> Method:
        """Apply ``key=value`` overrides to whichever of the quantizer/objective declares the key."""
        if not overrides:
            return self
        q_spec = _registry.quantizers.get(self.quantizer).params
        o_spec = _registry.objectives.get(self.objective).params
        qp, op = dict(self.quantizer_params), dict(self.objective_params)
        for key, value in overrides.items():
            if key in q_spec:
                qp[key] = value
            elif key in o_spec:
                op[key] = value
            else:
                raise UsageError(
                    f"method {self.name!r}: parameter {key!r} is declared by neither quantizer "
                    f"{self.quantizer!r} nor objective {self.objective!r}.{did_you_mean(key, [*q_spec, *o_spec])}"
                )
        out = replace(self, quantizer_params=qp, objective_params=op)
        out.build()  # validate now, with the plugin's own range message
        return out

    def as_dict(self) -> dict[str, Any]:
        """Name, pieces and sorted parameters: the method's identity (the description is display text)."""
        qp, op = (dict(sorted(p.items())) for p in (self.quantizer_params, self.objective_params))
        return {"name": self.name, "quantizer": self.quantizer, "objective": self.objective,
                "quantizer_params": qp, "objective_params": op}

    def declared_bits(self) -> Bits:
        """The quantizer's declaration for these params: it is instantiated, never given a model."""
        return _registry.quantizers.get(self.quantizer)(**self.quantizer_params).declared_bits()

    def label(self) -> str:
        """Display name: the name plus the declared bits when quantized (``pact W4A2``), as rows store it."""
        return method_label(self.name, self.declared_bits())


def method_from_table(name: str, table: dict[str, Any], source: str) -> Method:
    """Build a Method from a TOML table, naming ``source`` and the key on any error."""
    try:
        _registry.check_name("method", name)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    for key in table:
        if key not in METHOD_KEYS:
            raise UsageError(f"{source}: method {name!r} has unknown key {key!r}.{did_you_mean(key, METHOD_KEYS)}")
    for key in ("quantizer", "objective"):
        if key not in table:
            raise UsageError(f"{source}: method {name!r} needs a {key!r} key")
    return Method(
        name=name,
        quantizer=table["quantizer"],
        objective=table["objective"],
        quantizer_params=dict(table.get("quantizer_params", {})),
        objective_params=dict(table.get("objective_params", {})),
        description=table.get("description", ""),
    )


@lru_cache(maxsize=1)
def builtin_methods() -> dict[str, Method]:
    """The reference methods from ``methods.toml``."""
    path = Path(__file__).with_name("methods.toml")
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    data.pop("version", None)
    return {name: method_from_table(name, table, str(path)) for name, table in data.items()}


def get_method(name: str, extra: dict[str, Method] | None = None) -> Method:
    """A method by name from the built-ins and ``extra`` (suite-defined); unknown names get suggestions."""
    table = {**builtin_methods(), **(extra or {})}
    if name not in table:
        raise UsageError(f"unknown method {name!r}.{did_you_mean(name, table)}")
    return table[name]
