"""A static results page: one self-contained ``index.html`` per run directory or leaderboard folder.

Why: tables in CSV and Markdown are for tools; a reader wants a page to open. The page needs no server and
no network (figures are embedded as data URIs, the sorting script is inline), so it can be mailed,
attached to a paper's artifact or served by any static host. Built with Jinja2 (a well-kept template
engine torch already depends on) from ``sgq_bench/templates/site.html.j2``, rather than by concatenating HTML
strings: values are escaped by the engine, and the layout can be read and changed as HTML. The sorting
script is twenty lines of our own: a table library would have to be vendored to stay offline.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sgq_bench._io import atomic_write_text
from sgq_bench.errors import UsageError

KEY_COLUMNS = ("method", "bits", "explainer")
TEMPLATE = "site.html.j2"


def _env() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True)


def _num(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def _cell(mean: Any, lo: Any, hi: Any, n: Any, title: str) -> dict[str, str]:
    m, low, high = _num(mean), _num(lo), _num(hi)
    if not math.isfinite(m):
        return {"text": "undefined", "sort": "", "cls": "undefined", "title": title}
    half = (high - low) / 2 if math.isfinite(low) and math.isfinite(high) else math.nan
    text = f"{m:.4g}" + (f" ± {half:.2g}" if math.isfinite(half) else "") + f" (n={int(_num(n) or 0)})"
    return {"text": text, "sort": repr(m), "cls": "", "title": title}


def metric_tables(frame: Any, where: str, provenance_of: Any) -> list[dict[str, Any]]:
    """One wide table per (dataset, suite): rows (method, bits, explainer), columns metric[variant] with
    direction arrows; each cell ``mean ± CI half-width (n)`` with its provenance as the hover title."""
    tables = []
    for (dataset, suite), both in frame.groupby(["dataset", "suite"], sort=True):
        for kind, part in (("model", both[both["explainer"] == "-"]), ("maps", both[both["explainer"] != "-"])):
            if len(part):
                tables.append(_table(part, f"{dataset}-{suite}-{kind}",
                                     f"{dataset} · suite {suite} · " + ("the models" if kind == "model" else
                                                                        "their saliency maps"), where, provenance_of))
    return tables


def _table(part: Any, table_id: str, title: str, where: str, provenance_of: Any) -> dict[str, Any]:
    """One table: rows (method, bits, explainer), a column per metric[variant] with its direction arrow."""
    part = part.assign(col=part["metric"] + part["variant"].fillna("").map(lambda v: f"[{v}]" if v else ""))
    arrows = {c: "↑" if str(h) == "True" else "↓" for c, h in zip(part["col"], part["higher_is_better"])}
    cols = list(dict.fromkeys(part["col"]))
    columns = [{"label": k, "key": True} for k in KEY_COLUMNS] + [{"label": f"{c} {arrows[c]}", "key": False}
                                                                   for c in cols]
    rows = []
    for key, sub in part.groupby(list(KEY_COLUMNS), sort=True):
        by_col = {r["col"]: r for r in sub.to_dict("records")}
        cells = [{"text": str(k), "sort": str(k), "cls": "key", "title": ""} for k in key]
        for c in cols:
            r = by_col.get(c)
            cells.append(_cell(r["mean"], r["ci_low"], r["ci_high"], r["n_seeds"], provenance_of(r))
                         if r else {"text": "", "sort": "", "cls": "", "title": ""})
        rows.append(cells)
    return {"id": table_id, "title": title, "columns": columns, "rows": rows, "note": f"from {where}"}


def _claims(path: Path) -> dict[str, Any] | None:
    import pandas as pd

    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    cols = [c for c in ("claim", "text", "dataset", "method", "metric", "explainer", "diff", "diff_ci_low",
                        "diff_ci_high", "p_holm", "seeds", "verdict") if c in frame.columns]
    rows = []
    for r in frame[cols].to_dict("records"):
        verdict = r.get("verdict", "")
        cls = "verdict-holds" if verdict.startswith("holds") else "verdict-fails" if verdict.startswith("fails") else ""
        rows.append([{"text": r[c], "sort": r[c], "cls": cls if c == "verdict" else ""} for c in cols])
    return {"columns": cols, "rows": rows}


def _figures(folder: Path) -> list[dict[str, str]]:
    """Figures as data URIs (SVG where there is one, else PNG): the page stays one file."""
    out = []
    for png in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        svg = png.with_suffix(".svg")
        path, mime = (svg, "image/svg+xml") if svg.is_file() else (png, "image/png")
        out.append({"name": png.stem, "src": f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()})
    return out


def _render(path: Path, title: str, subtitle: str, tables: list, claims: Any, figures: list,
            provenance: list[tuple[str, str]]) -> Path:
    from importlib import metadata

    html = _env().get_template(TEMPLATE).render(
        title=title, subtitle=subtitle, tables=tables, claims=claims, figures=figures, provenance=provenance,
        version=metadata.version("sgq-bench"), generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    atomic_write_text(path, html)
    return path


def run_site(out: Path) -> Path:
    """``out/index.html`` from a run directory's report (``summary.csv``; ``claims.csv`` and figures if there)."""
    import json

    import pandas as pd

    out = Path(out)
    summary = out / "summary.csv"
    if not summary.is_file():
        raise UsageError(f"{out}: no summary.csv; write the report first (sgq-bench report {out})")
    frame = pd.read_csv(summary, dtype={"variant": str, "seeds": str}, keep_default_na=False, na_values=[""])
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    runs = manifest.get("runs") or []
    commits = sorted({str((r.get("provenance") or {}).get("git_commit")) for r in runs if r.get("provenance")})
    devices = sorted({str((r.get("provenance") or {}).get("device")) for r in runs if r.get("provenance")})

    def prov(r: dict[str, Any]) -> str:
        return (f"suite {r['suite']} v{r['suite_version']}, seeds {r['seeds']}, precision {r['precision']}, "
                f"eval_size {r['eval_size']}, eval_seed {r['eval_seed']}; runs by {', '.join(commits) or '?'} "
                f"on {', '.join(devices) or '?'}")

    provenance = [("run directory", str(out)), ("suite", str((manifest.get("suite") or {}).get("name", ""))),
                  ("commits", ", ".join(commits)), ("devices", ", ".join(devices)), ("runs", str(len(runs)))]
    return _render(out / "index.html", f"sgq-bench results: {out.name}", "One run directory's report.",
                   metric_tables(frame, str(summary), prov), _claims(out / "claims.csv"), _figures(out / "figures"),
                   provenance)


def leaderboard_site(folder: Path, dest: Path) -> Path:
    """``dest/index.html`` from every ``<dataset>.csv`` leaderboard in ``folder``."""
    import pandas as pd

    from sgq_bench.leaderboard import read_leaderboard

    boards = sorted(Path(folder).glob("*.csv"))
    if not boards:
        raise UsageError(f"{folder}: no leaderboard CSV here; publish one with sgq-bench leaderboard publish DIR")
    frames = [f for f in (read_leaderboard(p) for p in boards) if len(f)]
    if not frames:
        raise UsageError(f"{folder}: its leaderboards hold no rows ({', '.join(p.name for p in boards)}); publish a "
                         "run first: sgq-bench leaderboard publish DIR")
    frame = pd.concat(frames, ignore_index=True)

    def prov(r: dict[str, Any]) -> str:
        return (f"suite {r['suite']} v{r['suite_version']}, seeds {r['seeds']}, precision {r['precision']}; "
                f"commit {r['git_commit']}; device {r['device']}; torch {r['torch_version']}; "
                f"sgq-bench {r['sgq_bench_version']}; published {r['date']}")

    dest = Path(dest)
    return _render(dest / "index.html", "sgq-bench leaderboards", f"Every leaderboard in {folder}.",
                   metric_tables(frame, str(folder), prov), None, [], [("leaderboards", str(folder)),
                                                                      ("files", ", ".join(p.name for p in boards))])
