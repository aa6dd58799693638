"""Verdicts on stated claims ("SGT makes gradient maps more faithful") from statistics across seeds.

Why a module of its own: a claim in the README must be checkable, so it is written down once (a TOML
file: which method, metric, explainer, direction) and its verdict is computed from the results, never
typed by hand. The unit of every statistic is a trained model (a training seed); the per-image bootstrap
of one model never enters a verdict.

Verdicts (``verdict`` column):

- ``holds``: the difference to the reference is in the claimed direction and significant after Holm's
  correction over every claim tested in the same report (Welch across seeds; for ``not_worse`` claims
  a one-sided Welch test against the margin).
- ``contradicted``: significant in the opposite direction.
- ``not significant``: neither.
- ``untested``: fewer than two seeds on either side.

``unstable`` is added when the result differs between two seeds (per-seed paired differences on both
sides of the claim's threshold) or between this run and a number recorded elsewhere in the claims file
(another machine, another tie rule): the verdict text then gives both numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sgq_bench.errors import UsageError
from sgq_bench.report.controls import with_control_gains
from sgq_bench.report.stats import paired_seed_p, welch_difference, welch_p
from sgq_bench.report.summary import REFERENCE, _per_seed
from sgq_bench.results import NO_EXPLAINER, PROTOCOL_KEYS

KINDS = ("better", "not_worse")
PACKAGED = {"paper": Path(__file__).resolve().parent.parent / "config" / "claims.toml"}
CLAIM_COLUMNS = (
    "claim", "text", "dataset", "model", "suite", "suite_version", "eval_size", "precision", "method", "reference",
    "metric", "explainer", "variant", "reference_variant", "kind", "margin", "higher_is_better", "n_method",
    "n_reference", "seeds", "mean_method", "mean_reference", "diff", "diff_ci_low", "diff_ci_high", "p_welch",
    "p_paired", "p_test", "p_holm", "seed_diff_min", "seed_diff_max", "unstable", "verdict",
)


@dataclass(frozen=True)
class Elsewhere:
    """A difference (method - reference, in metric units) measured outside this run."""

    source: str
    diff: float
    dataset: str | None = None


@dataclass(frozen=True)
class Claim:
    """One claim: ``method`` is better than (or not worse than, within ``margin``) ``reference``."""

    id: str
    text: str
    method: str
    metric: str
    kind: str = "better"
    reference: str = REFERENCE
    explainer: str = NO_EXPLAINER
    variant: str = ""
    reference_variant: str | None = None
    margin: float = 0.0
    datasets: tuple[str, ...] | None = None
    elsewhere: tuple[Elsewhere, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"claim {self.id!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise UsageError(f"claim {self.id!r}: margin {self.margin!r} must be a finite number >= 0")
        if self.kind == "better" and self.margin:
            raise UsageError(f"claim {self.id!r}: a margin applies to kind 'not_worse' only")


_FIELDS = {"id", "text", "method", "metric", "kind", "reference", "explainer", "variant", "reference_variant",
           "margin", "datasets", "elsewhere"}


def _claim(entry: Any, where: str) -> Claim:
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: each [[claim]] must be a table, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)} (expected some of {', '.join(sorted(_FIELDS))})")
    missing = [k for k in ("id", "text", "method", "metric") if not isinstance(entry.get(k), str) or not entry[k]]
    if missing:
        raise UsageError(f"{where}: claim {entry.get('id', '?')!r} needs a non-empty string {', '.join(missing)}")
    args = dict(entry)
    if "margin" in args:
        if not isinstance(args["margin"], (int, float)) or isinstance(args["margin"], bool):
            raise UsageError(f"{where}: claim {entry['id']!r}: margin {args['margin']!r} is not a number")
        args["margin"] = float(args["margin"])
    if "datasets" in args:
        if not isinstance(args["datasets"], list) or not all(isinstance(d, str) for d in args["datasets"]):
            raise UsageError(f"{where}: claim {entry['id']!r}: datasets {args['datasets']!r} must be a list of "
                             "dataset names, e.g. [\"mnist\"]")
        args["datasets"] = tuple(args["datasets"])
    records = []
    for rec in args.pop("elsewhere", []):
        if not isinstance(rec, dict) or not isinstance(rec.get("source"), str) or not isinstance(
                rec.get("diff"), (int, float)):
            raise UsageError(f"{where}: claim {entry['id']!r}: each elsewhere entry needs source (text) and diff "
                             f"(a number), got {rec!r}")
        records.append(Elsewhere(rec["source"], float(rec["diff"]), rec.get("dataset")))
    return Claim(**args, elsewhere=tuple(records))


def load_claims(source: str | Path) -> list[Claim]:
    """Claims from a TOML file of ``[[claim]]`` tables, or a packaged set by name (``paper``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = PACKAGED.get(str(source), Path(source))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"claims file {str(source)!r} not found (a path, or one of: {', '.join(PACKAGED)})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"claims file {path}: not valid TOML ({exc})") from None
    entries = data.get("claim")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"claims file {path}: no [[claim]] tables")
    claims = [_claim(e, str(path)) for e in entries]
    ids = [c.id for c in claims]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UsageError(f"claims file {path}: duplicate claim id(s) {', '.join(dup)}")
    return claims


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count towards the family size)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _not_worse_p(effect_m: np.ndarray, effect_r: np.ndarray, margin: float) -> float:
    """One-sided Welch p of mean(effect_m) - mean(effect_r) > -margin (values oriented: higher is better)."""
    return welch_p(effect_m + margin, effect_r, alternative="greater")


def _values(per_seed: pd.DataFrame, method: str, explainer: str, metric: str, variant: str) -> pd.DataFrame:
    v = per_seed["variant"].fillna("").astype(str)
    sel = ((per_seed["method"] == method) & (per_seed["explainer"] == explainer) & (per_seed["metric"] == metric)
           & (v == variant) & per_seed["value"].notna())
    return per_seed.loc[sel]


def _fmt(x: float) -> str:
    return f"{x:+.3g}"


def evaluate_claims(results: pd.DataFrame, claims: Iterable[Claim], *, alpha: float = 0.05,
                    confidence: float = 0.95) -> pd.DataFrame:
    """One row per (claim, protocol) the results hold both sides of; columns :data:`CLAIM_COLUMNS`."""
    per_seed = _per_seed(with_control_gains(results))
    rows: list[dict[str, Any]] = []
    for claim in claims:
        ref_variant = claim.variant if claim.reference_variant is None else claim.reference_variant
        mine = _values(per_seed, claim.method, claim.explainer, claim.metric, claim.variant)
        theirs = _values(per_seed, claim.reference, claim.explainer, claim.metric, ref_variant)
        for protocol, m in mine.groupby(list(PROTOCOL_KEYS), sort=True, dropna=False):
            info = dict(zip(PROTOCOL_KEYS, protocol))
            if claim.datasets is not None and info["dataset"] not in claim.datasets:
                continue
            r = theirs
            for k, val in info.items():
                r = r[r[k] == val]
            if r.empty:
                continue
            rows.append(_row(claim, info, m, r, ref_variant, confidence))
    out = pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))
    if out.empty:
        return out
    out["p_holm"] = holm(out["p_test"].to_numpy(dtype=float))
    out["verdict"] = [_verdict(r, alpha) for r in out.itertuples(index=False)]
    return out


def _row(claim: Claim, info: dict[str, Any], m: pd.DataFrame, r: pd.DataFrame, ref_variant: str,
         confidence: float) -> dict[str, Any]:
    higher = bool(m["higher_is_better"].iloc[0])
    sign = 1.0 if higher else -1.0
    vm = dict(zip(m["seed"].astype(int), m["value"].astype(float)))
    vr = dict(zip(r["seed"].astype(int), r["value"].astype(float)))
    a, b = np.array(list(vm.values())), np.array(list(vr.values()))
    d = welch_difference([a.mean()], [a.std(ddof=1) if a.size > 1 else np.nan], [a.size], [b.mean()],
                         [b.std(ddof=1) if b.size > 1 else np.nan], [b.size], confidence)
    if claim.kind == "better":
        p_test = float(d.p[0])
    else:
        p_test = _not_worse_p(sign * a, sign * b, claim.margin)
    common = sorted(set(vm) & set(vr))
    seed_diffs = [vm[s] - vr[s] for s in common]
    return {
        "claim": claim.id, "text": claim.text, **{k: info[k] for k in ("dataset", "model", "suite", "suite_version",
                                                                          "eval_size", "precision")},
        "method": claim.method, "reference": claim.reference, "metric": claim.metric, "explainer": claim.explainer,
        "variant": claim.variant, "reference_variant": ref_variant, "kind": claim.kind, "margin": claim.margin,
        "higher_is_better": higher, "n_method": int(a.size), "n_reference": int(b.size),
        "seeds": ";".join(str(s) for s in sorted(set(vm) | set(vr))), "mean_method": float(a.mean()),
        "mean_reference": float(b.mean()), "diff": float(d.diff[0]), "diff_ci_low": float(d.ci_low[0]),
        "diff_ci_high": float(d.ci_high[0]), "p_welch": float(d.p[0]), "p_paired": paired_seed_p(vm, vr),
        "p_test": p_test, "p_holm": math.nan,
        "seed_diff_min": min(seed_diffs) if seed_diffs else math.nan,
        "seed_diff_max": max(seed_diffs) if seed_diffs else math.nan,
        "unstable": _instability(claim, info["dataset"], sign, float(d.diff[0]), seed_diffs), "verdict": "",
    }


def _instability(claim: Claim, dataset: str, sign: float, diff: float, seed_diffs: list[float]) -> str:
    """Empty, or why the claim is unstable: seeds (or other runs) on both sides of its threshold."""
    threshold = -claim.margin  # in "effect" units: positive = the method is better
    notes = []
    effects = [sign * x for x in seed_diffs]
    if len(effects) >= 2 and min(effects) <= threshold < max(effects):
        notes.append(f"across seeds (per-seed differences {_fmt(min(seed_diffs))} to {_fmt(max(seed_diffs))})")
    here = sign * diff > threshold
    for rec in claim.elsewhere:
        if rec.dataset not in (None, dataset):
            continue
        if (sign * rec.diff > threshold) != here:
            notes.append(f"across runs (here {_fmt(diff)}, {rec.source}: {_fmt(rec.diff)})")
    return "; ".join(notes)


def _verdict(row: Any, alpha: float) -> str:
    # effect: the difference oriented so that positive means the method is better
    effect = row.diff if row.higher_is_better else -row.diff
    effect_high = row.diff_ci_high if row.higher_is_better else -row.diff_ci_low
    significant = bool(np.isfinite(row.p_holm) and row.p_holm < alpha)
    if row.n_method < 2 or row.n_reference < 2:
        text = f"untested (n = {row.n_method}/{row.n_reference} seeds; at least 2 each needed)"
    elif row.kind == "not_worse":
        if significant:
            text = "holds"
        elif effect_high < -row.margin:  # the whole interval is worse than the margin allows
            text = "contradicted"
        else:
            text = "not significant"
    elif significant and effect != 0:
        text = "holds" if effect > 0 else "contradicted"
    else:
        text = "not significant"
    return f"{text}; unstable {row.unstable}" if row.unstable else text


def _p(p: float) -> str:
    return "–" if not np.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _ci(low: float, high: float) -> str:
    """`` [low, high]``, or nothing where one seed gives no interval."""
    return f" [{_fmt(low)}, {_fmt(high)}]" if np.isfinite(low) and np.isfinite(high) else ""


def to_markdown(table: pd.DataFrame) -> str:
    """The claims table for people: one line per claim and protocol, verdict last."""
    head = ("| claim | dataset | n (method/ref) | reference | method | difference [95% CI] | p Welch | p paired | "
            "p tested (Holm) | verdict |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in table.itertuples(index=False):
        what = r.text + (f" (margin {r.margin:g})" if r.kind == "not_worse" else "")
        lines.append(
            f"| {what} | {r.dataset} ({r.suite}) | {r.n_method}/{r.n_reference} | {r.mean_reference:.4g} | "
            f"{r.mean_method:.4g} | {_fmt(r.diff)}{_ci(r.diff_ci_low, r.diff_ci_high)} | "
            f"{_p(r.p_welch)} | {_p(r.p_paired)} | {_p(r.p_test)} ({_p(r.p_holm)}) | {r.verdict} |")
    return "\n".join(lines) + "\n"


def write_claims(out: Path, results: pd.DataFrame, claims: Sequence[Claim]) -> str:
    """Write ``claims.csv`` and ``claims.md`` into run directory ``out``; returns the markdown."""
    from sgq_bench._io import atomic_write_text

    table = evaluate_claims(results, claims)
    csv_path, md_path = out / "claims.csv", out / "claims.md"
    atomic_write_text(csv_path, table.to_csv(index=False, float_format="%.6g"))
    intro = ("# Claims\n\nEach claim tested across training seeds (the unit is a trained model): Welch difference "
             "with its 95% CI, the paired-by-seed p where seeds pair up, and the p of the claim's own test "
             "(two-sided Welch; one-sided against the margin for `not worse` claims) with Holm's correction "
             "over the claims below. See `sgq_bench/report/claims.py` for the verdict rules.\n\n")
    md = intro + (to_markdown(table) if not table.empty else "No claim could be tested.\n")
    atomic_write_text(md_path, md)
    return md
