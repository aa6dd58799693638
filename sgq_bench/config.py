"""Suite files (TOML) loaded into frozen dataclasses and validated; recipes are data, not code.

Every error names the file, the key, the bad value and what is allowed, in one line.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sgq_bench.errors import UsageError, did_you_mean
from sgq_bench.methods import Method, get_method, method_from_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

OPTIMIZERS = ("sgd", "adadelta", "adam")
SCHEDULES = ("none", "step", "cosine")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: everything here goes into the checkpoint key."""

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "none"  # none | step (gamma per epoch) | cosine (per step, to 0)
    gamma: float = 0.7  # step decay factor per epoch
    warmup_epochs: float = 0.0  # linear warm-up, in epochs (fractions allowed)
    epochs: int = 1
    batch_size: int = 64
    train_size: int | None = None  # None: the whole training split; else a seeded subset
    grad_clip: float | None = None

    def validate(self, where: str) -> Recipe:
        checks = [
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("lr", _num(self.lr) and self.lr > 0, "a number > 0"),
            ("momentum", _num(self.momentum) and 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("weight_decay", _num(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            ("gamma", _num(self.gamma) and 0 < self.gamma <= 1, "a number in (0, 1]"),
            ("warmup_epochs", _num(self.warmup_epochs) and self.warmup_epochs >= 0, "a number >= 0"),
            ("epochs", _int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            ("batch_size", _int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            ("train_size", self.train_size is None or (_int(self.train_size) and self.train_size >= 1),
             "an integer >= 1 (or absent for the whole split)"),
            ("grad_clip", self.grad_clip is None or (_num(self.grad_clip) and self.grad_clip > 0), "a number > 0"),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise UsageError(f"{where}: recipe.{key} = {getattr(self, key)!r} is invalid; expected {allowed}")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def recipe_from_table(table: dict[str, Any], where: str) -> Recipe:
    names = [f.name for f in fields(Recipe)]
    for key in table:
        if key not in names:
            raise UsageError(f"{where}: unknown recipe key {key!r}.{did_you_mean(key, names)}")
    return Recipe(**table).validate(where)


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset of a suite: its model, training recipe and evaluation sizes."""

    name: str
    model: str
    recipe: Recipe
    eval_size: int = 1000
    dataset_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """A resolved suite: datasets x methods x seeds, plus what to evaluate."""

    name: str
    version: str
    path: str
    description: str
    seeds: tuple[int, ...]
    datasets: tuple[DatasetPlan, ...]
    methods: tuple[Method, ...]
    explainers: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    metric_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def dataset(self, name: str) -> DatasetPlan:
        for d in self.datasets:
            if d.name == name:
                return d
        raise UsageError(f"suite {self.name!r} has no dataset {name!r}.{did_you_mean(name, [d.name for d in self.datasets])}")

    def method(self, name: str) -> Method:
        for m in self.methods:
            if m.name == name:
                return m
        return get_method(name)


SUITE_KEYS = ("version", "name", "description", "seeds", "methods", "define", "datasets", "evaluate")
DATASET_KEYS = ("model", "recipe", "eval_size", "params")
EVALUATE_KEYS = ("explainers", "metrics", "params")


def suite_path(name_or_path: str) -> Path:
    """A suite name (``configs/<name>.toml``) or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise UsageError(f"suite file {str(p)!r} does not exist")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    known = sorted(f.stem for f in CONFIG_DIR.glob("*.toml")) if CONFIG_DIR.is_dir() else []
    known = [k for k in known if k != "recipes"]
    raise UsageError(f"unknown suite {name_or_path!r} (looked in {CONFIG_DIR}).{did_you_mean(name_or_path, known)}")


def load_suite(name_or_path: str, overrides: dict[str, Any] | None = None) -> Suite:
    """Load and validate a suite; ``overrides`` are dotted keys (``--set``) applied before validation."""
    path = suite_path(name_or_path)
    where = str(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: not valid TOML ({exc})") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, where)
    return suite_from_dict(raw, where, default_name=path.stem)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"{where}: --set {dotted}: {part!r} is not a table")
    node[parts[-1]] = value


def suite_from_dict(raw: dict[str, Any], where: str, default_name: str = "suite") -> Suite:
    for key in raw:
        if key not in SUITE_KEYS:
            raise UsageError(f"{where}: unknown key {key!r}.{did_you_mean(key, SUITE_KEYS)}")
    if "version" not in raw:
        raise UsageError(f"{where}: missing key 'version' (every suite carries a version)")
    defined = {
        name: method_from_table(name, table, where) for name, table in dict(raw.get("define", {})).items()
    }
    method_names = raw.get("methods", ["baseline", "pact", "sgt", "sgt_pact"])
    methods = tuple(get_method(n, defined).resolved() for n in method_names)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_int(s) and s >= 0 for s in seeds):
        raise UsageError(f"{where}: seeds = {seeds!r} is invalid; expected a non-empty list of integers >= 0")
    plans = []
    for dname, table in dict(raw.get("datasets", {})).items():
        for key in table:
            if key not in DATASET_KEYS:
                raise UsageError(f"{where}: datasets.{dname} has unknown key {key!r}.{did_you_mean(key, DATASET_KEYS)}")
        if "model" not in table:
            raise UsageError(f"{where}: datasets.{dname} needs a 'model' key")
        eval_size = table.get("eval_size", 1000)
        if not _int(eval_size) or eval_size < 1:
            raise UsageError(f"{where}: datasets.{dname}.eval_size = {eval_size!r} is invalid; expected an integer >= 1")
        recipe = recipe_from_table(dict(table.get("recipe", {})), f"{where}: datasets.{dname}")
        plans.append(DatasetPlan(dname, table["model"], recipe, eval_size, dict(table.get("params", {}))))
    if not plans:
        raise UsageError(f"{where}: no [datasets.*] table; a suite needs at least one dataset")
    evaluate = dict(raw.get("evaluate", {}))
    for key in evaluate:
        if key not in EVALUATE_KEYS:
            raise UsageError(f"{where}: evaluate has unknown key {key!r}.{did_you_mean(key, EVALUATE_KEYS)}")
    return Suite(
        name=str(raw.get("name", default_name)),
        version=str(raw["version"]),
        path=where,
        description=str(raw.get("description", "")),
        seeds=tuple(seeds),
        datasets=tuple(plans),
        methods=methods,
        explainers=tuple(evaluate.get("explainers", ())),
        metrics=tuple(evaluate.get("metrics", ())),
        metric_params=dict(evaluate.get("params", {})),
        raw=raw,
    )


def override_recipe(recipe: Recipe, where: str, **changes: Any) -> Recipe:
    """The recipe with non-None ``changes`` applied and validated (CLI --epochs/--train-size)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return replace(recipe, **changes).validate(where) if changes else recipe
