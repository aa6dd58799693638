"""Suite files (TOML) loaded into frozen dataclasses and validated; recipes are data, not code.

Every error names the file, the key, the bad value and what is allowed, in one line, and unknown keys
are errors (a typo silently ignored would make a run measure something else than its author meant).
Plugin names (datasets, models, methods, explainers, metrics) and plugin parameters are checked
against the registries here, at load time, so a bad suite fails before any training starts.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sgq_bench._io import file_sha256, stable_hash
from sgq_bench._params import INT_LIMIT, SEED_LIMIT, resolve_params
from sgq_bench._registry import check_name
from sgq_bench.config.methods import Method, get_method, method_from_table
from sgq_bench.errors import UsageError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Where suite names are looked up, in order: the clone's top-level configs/ (the folder people edit;
# only when this package is the source tree of a clone, i.e. a pyproject.toml sits next to configs/),
# then the copy of it that the wheel ships (build_hooks.py puts configs/*.toml there).
_REPO = Path(__file__).resolve().parent.parent.parent
PACKAGED_SUITES_DIR = Path(__file__).resolve().parent / "suites"
CONFIG_DIR = _REPO / "configs" if (_REPO / "pyproject.toml").is_file() and (_REPO / "configs").is_dir() else None
SUITE_DIRS = tuple(d for d in (CONFIG_DIR, PACKAGED_SUITES_DIR) if d is not None)

OPTIMIZERS = ("sgd", "adadelta", "adam")
SCHEDULES = ("none", "step", "cosine")
PRECISIONS = ("fp32", "bf16", "auto")


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
    precision: str = "fp32"  # fp32 | bf16 (autocast) | auto (bf16 where the device has it, else fp32)
    channels_last: bool = False  # NHWC training tensors (oneDNN's fast layout on CPU)
    # run the model under torch.compile (inductor) while training; part of the checkpoint key only when
    # true, so every eager checkpoint keeps its key (compiled kernels round differently: other weights)
    compile: bool = field(default=False, metadata={"added_late": True})

    def validate(self, where: str) -> Recipe:
        checks = [
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("lr", _num(self.lr) and self.lr > 0, "a number > 0"),
            ("momentum", _num(self.momentum) and 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("nesterov", isinstance(self.nesterov, bool), "true or false"),
            ("weight_decay", _num(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            ("gamma", _num(self.gamma) and 0 < self.gamma <= 1, "a number in (0, 1]"),
            ("warmup_epochs", _num(self.warmup_epochs) and self.warmup_epochs >= 0, "a number >= 0"),
            ("epochs", _int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            ("batch_size", _int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            ("train_size", self.train_size is None or (_int(self.train_size) and self.train_size >= 1),
             "an integer >= 1 (or absent for the whole split)"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("channels_last", isinstance(self.channels_last, bool), "true or false"),
            ("compile", isinstance(self.compile, bool), "true or false"),
            ("grad_clip", self.grad_clip is None or (_num(self.grad_clip) and self.grad_clip > 0), "a number > 0"),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise UsageError(f"{where}: recipe.{key} = {getattr(self, key)!r} is invalid; expected {allowed}")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """The recipe as checkpoint keys and suite fingerprints hash it: a field added after models and run
        directories were published (``metadata["added_late"]``, as ``Param.added_late`` for plugins) only
        when it is not at its default. Why: ``compile: false`` in the hash once refused every run directory."""
        out = asdict(self)
        for f in fields(self):
            if f.metadata.get("added_late") and out[f.name] == f.default:
                del out[f.name]
        return out


def _num(v: Any) -> bool:
    """A finite real number (NaN passes every comparison's negation, inf passes ``> 0``)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    """An integer that fits 64 bits (TOML integers are unbounded; a 20-digit one must not overflow later)."""
    return isinstance(v, int) and not isinstance(v, bool) and -INT_LIMIT <= v < INT_LIMIT


def _seed(v: Any) -> bool:
    """A seed: an integer in [0, 2**31), what every seeded generator accepts."""
    return _int(v) and 0 <= v < SEED_LIMIT


def _name(where: str, key: str, kind: str, name: Any) -> str:
    """``name`` checked against the one name grammar (names become folder and file names)."""
    try:
        return check_name(kind, name)
    except UsageError as exc:
        raise UsageError(f"{where}: {key}: {exc}") from None


def _unknown(where: str, key: str, allowed: tuple[str, ...] | list[str]) -> UsageError:
    """'FILE: unknown key 'k'; allowed: a, b. Did you mean ...?' (one line)."""
    leaf = key.rsplit(".", 1)[-1]
    hint = did_you_mean(leaf, allowed)
    hint = hint if hint.startswith(" Did you mean") else ""
    return UsageError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}.{hint}")


def _table(where: str, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: {key} = {value!r} is invalid; expected a table")
    return value


def _str_list(where: str, key: str, value: Any, allow_empty: bool = True) -> tuple[str, ...]:
    ok = isinstance(value, list) and all(isinstance(v, str) for v in value) and (allow_empty or value)
    if not ok:
        raise UsageError(f"{where}: {key} = {value!r} is invalid; expected a {'' if allow_empty else 'non-empty '}"
                         "list of names")
    dupes = sorted({v for v in value if value.count(v) > 1})
    if dupes:
        raise UsageError(f"{where}: {key} lists {dupes[0]!r} twice; each name may appear once")
    return tuple(value)


def _plugin(where: str, key: str, kind: str, name: Any) -> Any:
    """The registered plugin class ``name`` of ``kind``; an error names the file and key."""
    from sgq_bench import _registry

    if not isinstance(name, str):
        raise UsageError(f"{where}: {key} = {name!r} is invalid; expected a {kind[:-1]} name")
    _name(where, key, kind[:-1], name)
    try:
        return _registry.registry(kind).get(name)
    except UsageError as exc:
        raise UsageError(f"{where}: {key}: {exc}") from None


def recipe_from_table(table: dict[str, Any], where: str) -> Recipe:
    names = tuple(f.name for f in fields(Recipe))
    for key in table:
        if key not in names:
            raise _unknown(where, f"recipe.{key}", names)
    return Recipe(**table).validate(where)


def parse_bits(value: Any, where: str, key: str = "bits") -> tuple[int, int]:
    """A bits value as (w, a): ``4`` -> (4, 4); ``"4/2"``, ``"W4A2"`` or ``[4, 2]`` -> (4, 2).

    Range checking is left to the quantizer plugin's own Param declaration (see ``apply_bits``).
    """
    allowed = "an integer (W=A), 'W/A' such as '4/2', 'W4A2', or [W, A]"
    text = value
    if _int(value):
        return value, value
    if isinstance(value, list) and len(value) == 2 and all(_int(v) for v in value):
        return value[0], value[1]
    if isinstance(value, str):
        text = value.strip().upper().replace("W", "").replace("A", "/")
        w, sep, a = text.partition("/")
        try:
            return int(w), int(a if sep else w)
        except ValueError:
            pass
    raise UsageError(f"{where}: {key} = {value!r} is invalid; expected {allowed}")


def apply_bits(methods: tuple[Method, ...], bits: tuple[int, int], where: str) -> tuple[Method, ...]:
    """Override weight/activation bits of every method whose quantizer declares ``w_bits``/``a_bits``.

    Why a suite-level ``bits``: ``--set bits=2/2`` turns the reference grid into a low-bit study in
    one flag. Float methods are left alone; the values are validated by the quantizer's Param ranges.
    """
    from sgq_bench import _registry

    out, touched = [], 0
    for m in methods:
        spec = _registry.quantizers.get(m.quantizer).params
        if "w_bits" in spec and "a_bits" in spec:
            try:
                m = m.with_params({"w_bits": bits[0], "a_bits": bits[1]}).resolved()
            except UsageError as exc:
                shown = bits[0] if bits[0] == bits[1] else f"{bits[0]}/{bits[1]}"
                raise UsageError(f"{where}: bits = {shown!r} is invalid for method {m.name!r}: {exc}") from None
            touched += 1
        out.append(m)
    if not touched:
        raise UsageError(f"{where}: bits is set but no method of the suite has a quantizer with w_bits/a_bits")
    return tuple(out)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a suite: its model, training recipe, evaluation size and metric settings."""

    name: str
    model: str
    recipe: Recipe
    eval_size: int = 1000
    dataset_params: dict[str, Any] = field(default_factory=dict)
    metric_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # merged over the suite's


@dataclass(frozen=True)
class ExternalModel:
    """A ``[models.NAME]`` entry: a model trained elsewhere, scored like the grid's (``sgq_bench.weights``).

    Why declared, not guessed: the file is a bare state dict, so the suite says which dataset, architecture
    and method (hence quantized layers) it is; the file's sha256 is its identity in every row."""

    name: str
    weights: str  # absolute path (a relative one in the file is relative to the suite file)
    sha256: str
    dataset: str
    model: str
    method: Method
    seed: int = 0  # a label for the across-seed statistics (the training seed, if known)


@dataclass(frozen=True)
class Suite:
    """A resolved suite: datasets x methods x seeds, plus what to evaluate."""

    name: str
    version: str
    path: str
    description: str
    seeds: tuple[int, ...]
    datasets: tuple[DatasetEntry, ...]
    methods: tuple[Method, ...]
    explainers: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    metric_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    bits: tuple[int, int] | None = None
    eval_seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    models: tuple[ExternalModel, ...] = ()

    def dataset(self, name: str) -> DatasetEntry:
        for d in self.datasets:
            if d.name == name:
                return d
        raise UsageError(f"suite {self.name!r} has no dataset {name!r}.{did_you_mean(name, [d.name for d in self.datasets])}")

    def method(self, name: str) -> Method:
        for m in self.methods:
            if m.name == name:
                return m
        return get_method(name)

    def params_for(self, dataset: str) -> dict[str, dict[str, Any]]:
        """Metric parameters for ``dataset``: the suite's ``evaluate.params`` overlaid by the dataset's."""
        out = {k: dict(v) for k, v in self.metric_params.items()}
        for metric, params in self.dataset(dataset).metric_params.items():
            out.setdefault(metric, {}).update(params)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The resolved suite as plain JSON-able data (what manifest.json records)."""
        return {
            "name": self.name,
            "version": self.version,
            "path": self.path,
            "description": self.description,
            "seeds": list(self.seeds),
            "bits": list(self.bits) if self.bits else None,
            "eval_seed": self.eval_seed,
            "overrides": dict(self.overrides),
            "methods": [m.as_dict() for m in self.methods],
            "datasets": [
                {"name": d.name, "model": d.model, "recipe": d.recipe.as_dict(), "eval_size": d.eval_size,
                 "dataset_params": d.dataset_params, "metric_params": d.metric_params}
                for d in self.datasets
            ],
            "explainers": list(self.explainers),
            "metrics": list(self.metrics),
            "metric_params": self.metric_params,
            "models": [{"name": m.name, "weights": m.weights, "sha256": m.sha256, "dataset": m.dataset,
                        "model": m.model, "method": m.method.as_dict(), "seed": m.seed} for m in self.models],
        }

    def _hashed(self) -> dict[str, Any]:
        """``as_dict`` with each recipe in its keyed form (see ``Recipe.key_dict``)."""
        d = self.as_dict()
        for entry, ds in zip(d["datasets"], self.datasets):
            entry["recipe"] = ds.recipe.key_dict()
        return d

    def fingerprint(self) -> str:
        """Hash of everything that changes a cell's numbers: not the path, the description, nor the seeds.

        Why not the seeds: a seed adds or removes whole cells, each keyed by its own spec, so a run directory
        grows from two seeds to three without mixing anything. The ``[models.*]`` entries are left out for
        the same reason: each is a cell keyed by its file's sha256. Methods stay in: a method redefined under the
        same name would otherwise mix two definitions in one report's rows.
        """
        d = self._hashed()
        for k in ("path", "description", "overrides", "seeds", "models"):
            d.pop(k)
        return stable_hash(d)[:16]

    def seeded_fingerprint(self, seeds: Any) -> str:
        """The fingerprint as manifests written before 2026-12-03 hold it (seeds included), for ``seeds``."""
        d = self._hashed()
        for k in ("path", "description", "overrides", "models"):
            d.pop(k)
        d["seeds"] = list(seeds) if isinstance(seeds, (list, tuple)) else seeds
        return stable_hash(d)[:16]


SUITE_KEYS = ("version", "name", "description", "seeds", "methods", "bits", "define", "datasets", "evaluate",
              "models")
MODEL_KEYS = ("weights", "dataset", "model", "method", "seed")
DATASET_KEYS = ("model", "recipe", "eval_size", "params", "metric_params")
EVALUATE_KEYS = ("explainers", "metrics", "params", "eval_seed")
DEFAULT_METHODS = ["baseline", "pact", "sgt", "sgt_pact"]


def available_suites() -> list[tuple[str, Path]]:
    """(name, file) of every suite a name finds: the clone's ``configs/`` first, then the packaged copies
    (a name in both is the clone's). Why: an installed package has no ``configs/`` to look into."""
    seen: dict[str, Path] = {}
    for d in SUITE_DIRS:
        for path in sorted(d.glob("*.toml")) if d.is_dir() else []:
            seen.setdefault(path.stem, path)
    return sorted(seen.items())


def suite_path(name_or_path: str) -> Path:
    """A suite name (``configs/<name>.toml`` in a clone, else the packaged copy) or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.is_file():  # a folder that happens to share a suite's name is not a suite
        if not p.is_file():
            raise UsageError(f"suite file {str(p)!r} does not exist")
        return p
    dirs = [d for d in SUITE_DIRS if d.is_dir()]
    for d in dirs:
        candidate = d / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({f.stem for d in dirs for f in d.glob("*.toml")})
    if p.is_dir():
        inside = sorted(f.name for f in p.glob("*.toml"))
        raise UsageError(f"--suite {name_or_path!r} is a directory; a suite is a name or a .toml file"
                         + (f" (this one holds {', '.join(inside)})" if inside else " (this one holds no .toml file)"))
    looked = " and ".join(str(d) for d in SUITE_DIRS)
    raise UsageError(f"unknown suite {name_or_path!r} (looked in {looked}).{did_you_mean(name_or_path, known)}")


def load_suite(name_or_path: str, overrides: dict[str, Any] | None = None) -> Suite:
    """Load and validate a suite; ``overrides`` are dotted keys (``--set``) applied before validation.

    Overrides go through the same validation as the file, so ``--set bits=0`` fails exactly like
    ``bits = 0`` written in the file would, naming the file and the key.
    """
    path = suite_path(name_or_path)
    where = str(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: not valid TOML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot read suite file ({exc.strerror})") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, where)
    suite = suite_from_dict(raw, where, default_name=path.stem)
    return replace(suite, overrides=dict(overrides or {}))


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    node = raw
    parts = dotted.split(".")
    if not all(parts):
        raise UsageError(f"{where}: --set {dotted!r} is not a dotted key such as datasets.mnist.eval_size")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"{where}: --set {dotted}: {'.'.join(parts[: i + 1])!r} is not a table")
    node[parts[-1]] = value


def _defined(raw: dict[str, Any], where: str) -> dict[str, Method]:
    """The suite's ``[define.NAME]`` methods."""
    defined = {}
    for name, table in _table(where, "define", raw.get("define", {})).items():
        _name(where, f"define.{name!r}", "method", name)
        try:
            defined[name] = method_from_table(name, _table(where, f"define.{name}", table), where)
        except UsageError as exc:
            msg = str(exc)
            raise UsageError(msg if msg.startswith(where) else f"{where}: define.{name}: {msg}") from None
    return defined


def _methods(raw: dict[str, Any], where: str, defined: dict[str, Method]) -> tuple[Method, ...]:
    """The grid's methods; ``methods = []`` is allowed only in a suite that scores ``[models.*]`` files."""
    names = _str_list(where, "methods", raw.get("methods", DEFAULT_METHODS), allow_empty="models" in raw)
    out = []
    for n in names:
        try:
            out.append(get_method(n, defined).resolved())
        except UsageError as exc:
            raise UsageError(f"{where}: methods: {exc}") from None
    return tuple(out)


def _external_models(raw: dict[str, Any], where: str, datasets: tuple[DatasetEntry, ...],
                     defined: dict[str, Method]) -> tuple[ExternalModel, ...]:
    """The ``[models.NAME]`` tables: each file exists and is hashed now; its dataset is one of the suite's
    (whose eval_size and metric params it is scored with). Whether the state dict fits the declared
    architecture is checked by ``run`` before any work (that needs torch; config does not import it)."""
    out, by_sha = [], {}
    base = Path(where).parent
    for name, table in _table(where, "models", raw.get("models", {})).items():
        key = f"models.{name}"
        _name(where, key, "model", name)
        table = _table(where, key, table)
        for k in table:
            if k not in MODEL_KEYS:
                raise _unknown(where, f"{key}.{k}", MODEL_KEYS)
        for k in ("weights", "dataset", "method"):
            if not isinstance(table.get(k), str) or not table[k]:
                raise UsageError(f"{where}: {key}.{k} = {table.get(k)!r} is invalid; expected a "
                                 + ("file path" if k == "weights" else f"{k} name"))
        entry = next((d for d in datasets if d.name == table["dataset"]), None)
        if entry is None:
            raise UsageError(f"{where}: {key}.dataset = {table['dataset']!r} is not a dataset of this suite; "
                             f"expected one of {', '.join(d.name for d in datasets)}")
        model = table.get("model", entry.model)
        _plugin(where, f"{key}.model", "models", model)
        try:
            method = get_method(table["method"], defined).resolved()
        except UsageError as exc:
            raise UsageError(f"{where}: {key}.method: {exc}") from None
        seed = table.get("seed", 0)
        if not _seed(seed):
            raise UsageError(f"{where}: {key}.seed = {seed!r} is invalid; expected an integer in [0, {SEED_LIMIT - 1}]")
        path = Path(table["weights"]).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise UsageError(f"{where}: {key}.weights = {table['weights']!r}: no such file ({path})")
        sha = file_sha256(path)
        if sha in by_sha:
            raise UsageError(f"{where}: {key}.weights is the same file as models.{by_sha[sha]}.weights "
                             f"(sha256 {sha[:12]}); score each model once")
        by_sha[sha] = name
        out.append(ExternalModel(name, str(path.resolve()), sha, entry.name, model, method, seed))
    return tuple(out)


def _dataset_entry(dname: str, table: Any, where: str, metrics: tuple[str, ...]) -> DatasetEntry:
    table = _table(where, f"datasets.{dname}", table)
    for key in table:
        if key not in DATASET_KEYS:
            raise _unknown(where, f"datasets.{dname}.{key}", DATASET_KEYS)
    ds_cls = _plugin(where, f"datasets.{dname}", "datasets", dname)
    if "model" not in table:
        raise UsageError(f"{where}: datasets.{dname} needs a 'model' key (a registered model name)")
    _plugin(where, f"datasets.{dname}.model", "models", table["model"])
    eval_size = table.get("eval_size", 1000)
    if not _int(eval_size) or eval_size < 1:
        raise UsageError(f"{where}: datasets.{dname}.eval_size = {eval_size!r} is invalid; expected an integer >= 1")
    params = _table(where, f"datasets.{dname}.params", table.get("params", {}))
    try:
        resolve_params(f"{where}: datasets.{dname}.params", getattr(ds_cls, "params", {}), params)
    except UsageError as exc:
        raise UsageError(str(exc)) from None
    recipe = recipe_from_table(_table(where, f"datasets.{dname}.recipe", table.get("recipe", {})),
                               f"{where}: datasets.{dname}")
    mparams = _metric_params(table.get("metric_params", {}), where, f"datasets.{dname}.metric_params", metrics)
    return DatasetEntry(dname, table["model"], recipe, eval_size, dict(params), mparams)


def _metric_params(value: Any, where: str, key: str, metrics: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``{metric: {param: value}}`` checked against each metric's declared Params."""
    out = {}
    for metric, params in _table(where, key, value).items():
        if metric not in metrics:
            raise UsageError(f"{where}: {key}.{metric}: {metric!r} is not in evaluate.metrics; "
                             f"allowed: {', '.join(metrics) or '(no metrics listed)'}")
        cls = _plugin(where, f"{key}.{metric}", "metrics", metric)
        params = _table(where, f"{key}.{metric}", params)
        try:
            cls(**dict(params))  # the plugin's own validation (ranges, and e.g. increasing fractions)
        except UsageError as exc:
            raise UsageError(f"{where}: {key}.{metric}: {exc}") from None
        out[metric] = dict(params)
    return out


def _evaluate_table(raw: dict[str, Any], where: str) -> tuple[tuple[str, ...], tuple[str, ...], int, Any]:
    """The ``[evaluate]`` table: explainers, metrics (each needing attributions has an explainer),
    eval_seed and the metrics' params, validated."""
    evaluate = _table(where, "evaluate", raw.get("evaluate", {}))
    for key in evaluate:
        if key not in EVALUATE_KEYS:
            raise _unknown(where, f"evaluate.{key}", EVALUATE_KEYS)
    explainers = _str_list(where, "evaluate.explainers", evaluate.get("explainers", []))
    for i, name in enumerate(explainers):
        _plugin(where, f"evaluate.explainers[{i}]", "explainers", name)
    metrics = _str_list(where, "evaluate.metrics", evaluate.get("metrics", []))
    for i, name in enumerate(metrics):
        cls = _plugin(where, f"evaluate.metrics[{i}]", "metrics", name)
        if getattr(cls, "needs_attributions", False) and not explainers:
            raise UsageError(f"{where}: evaluate.metrics[{i}] = {name!r} needs attributions but "
                             "evaluate.explainers is empty")
    eval_seed = evaluate.get("eval_seed", 0)
    if not _seed(eval_seed):
        raise UsageError(f"{where}: evaluate.eval_seed = {eval_seed!r} is invalid; expected an integer in "
                         f"[0, {SEED_LIMIT - 1}]")
    metric_params = _metric_params(evaluate.get("params", {}), where, "evaluate.params", metrics)
    return explainers, metrics, eval_seed, metric_params


def suite_from_dict(raw: dict[str, Any], where: str, default_name: str = "suite") -> Suite:
    """Validate a parsed suite table into a ``Suite``; the first problem raises a one-line UsageError."""
    for key in raw:
        if key not in SUITE_KEYS:
            raise _unknown(where, key, SUITE_KEYS)
    if "version" not in raw:
        raise UsageError(f"{where}: missing key 'version' (every suite carries a version)")
    for key in ("version", "name", "description"):
        bad = key in raw and (not isinstance(raw[key], (str, int)) or isinstance(raw[key], bool))
        if bad:
            raise UsageError(f"{where}: {key} = {raw[key]!r} is invalid; expected a string")
    defined = _defined(raw, where)
    methods = _methods(raw, where, defined)
    bits = None
    if "bits" in raw:
        bits = parse_bits(raw["bits"], where)
        methods = apply_bits(methods, bits, where)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_seed(s) for s in seeds):
        raise UsageError(f"{where}: seeds = {seeds!r} is invalid; expected a non-empty list of integers >= 0 "
                         "and < 2**31")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"{where}: seeds = {seeds!r} repeats a seed; each seed may appear once")
    explainers, metrics, eval_seed, metric_params = _evaluate_table(raw, where)
    datasets = _table(where, "datasets", raw.get("datasets", {}))
    plans = tuple(_dataset_entry(dname, table, where, metrics) for dname, table in datasets.items())
    if not plans:
        raise UsageError(f"{where}: no [datasets.*] table; a suite needs at least one dataset")
    models = _external_models(raw, where, plans, defined)
    if not methods and not models:
        raise UsageError(f"{where}: methods = [] and no [models.*] table: the suite has nothing to score")
    name = str(raw.get("name", default_name))
    try:
        check_name("suite", name)  # the default run folder is runs/<name>
    except UsageError as exc:
        hint = "" if "name" in raw else " (taken from the file name; set name = \"...\" in the file)"
        raise UsageError(f"{where}: {exc}{hint}") from None
    return Suite(
        name=name,
        version=str(raw["version"]),
        path=where,
        description=str(raw.get("description", "")),
        seeds=tuple(seeds),
        datasets=plans,
        methods=methods,
        explainers=explainers,
        metrics=metrics,
        metric_params=metric_params,
        raw=raw,
        bits=bits,
        eval_seed=eval_seed,
        models=models,
    )


def override_recipe(recipe: Recipe, where: str, **changes: Any) -> Recipe:
    """The recipe with non-None ``changes`` applied and validated (CLI --epochs/--train-size)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return replace(recipe, **changes).validate(where) if changes else recipe
