"""Export the training-only numbers (the README's training table, the bf16 check) from the cached checkpoints.

Why: those numbers come from trainings that no suite run scored, so no results.jsonl holds them. Each
checkpoint of a recipe longer than one epoch records its test accuracy after every epoch; `sgq-bench
status` reads it (a 1-epoch model logs none and is evaluated here instead), and this script writes
what it reads to docs/results/training/ (CSV for tools, a markdown table that docs/results.md and the README link),
with the checkpoint file of each number (its name carries the content key of everything that determines
the weights) and the machine and commit of the export.

    SGQ_BENCH_DATA=... python docs/training_runs.py    # needs the checkpoints in the cache (or retrain them)
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pandas as pd

from sgq_bench._provenance import provenance
from sgq_bench.config.suite import load_suite
from sgq_bench.orchestration.cells import expand, parse_only
from sgq_bench.orchestration.status import suite_status
from sgq_bench.specs import ExecContext

OUT = Path(__file__).resolve().parent / "results" / "training"
# (suite, overrides, --only): the recipes behind the README's training table and the bf16 check
EXPORTS = (
    ("foundation", {}, None),
    ("foundation", {"seeds": [0, 1, 2]}, "dataset=cifar10,method=baseline"),
    ("precision_check", {"seeds": [0, 1, 2]}, None),
)


def _evaluate(spec) -> float:
    """Test accuracy of a cached model (loaded, never trained here) on its whole test split."""
    import torch

    from sgq_bench.data import load_dataset, load_split
    from sgq_bench.train import accuracy, load_or_train, locate_checkpoint

    if not locate_checkpoint(spec).path.exists():
        raise SystemExit(f"no checkpoint for {spec}")
    model = load_or_train(spec, ExecContext(progress=False)).model
    dataset = load_dataset(spec.dataset, spec.dataset_params)
    return accuracy(model, dataset, load_split(dataset, False), torch.device("cpu"))


def collect() -> pd.DataFrame:
    frames = []
    for name, overrides, only in EXPORTS:
        suite = load_suite(name, overrides)
        frame = suite_status(suite, out=OUT / "no-run", only=only)
        frame = frame[frame["state"].isin(["trained", "done"])].copy()
        specs = {c.id: c.spec for c in expand(suite, parse_only(only))}
        cells = [specs[c] for c in frame["cell"]]
        frame = frame.assign(suite=name, dataset=[s.dataset for s in cells], model=[s.model for s in cells],
                             method=[s.method.name for s in cells], seed=[s.seed for s in cells],
                             channels_last=[s.recipe.channels_last for s in cells])
        frame["accuracy_from"] = "checkpoint"
        for i in frame.index[frame["test_accuracy"].isna()]:  # 1-epoch recipes log no per-epoch accuracy
            frame.loc[i, ["test_accuracy", "accuracy_from"]] = _evaluate(specs[frame.loc[i, "cell"]]), "evaluated"
        frames.append(frame)
    cols = ["suite", "dataset", "model", "method", "seed", "precision", "channels_last", "epochs", "test_accuracy",
            "accuracy_from", "train_s", "checkpoint"]
    table = pd.concat(frames, ignore_index=True)[cols].drop_duplicates(["suite", "checkpoint"])
    return table.sort_values(["dataset", "suite", "method", "seed"], kind="stable").reset_index(drop=True)


def main() -> None:
    table = collect()
    prov = provenance()
    table = table.assign(exported=datetime.date.today().isoformat(), git_commit=prov["git_commit"],
                         device=prov["device"], sgq_bench_version=prov["sgq_bench_version"],
                         torch_version=prov["torch_version"])
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / "training_runs.csv", index=False)
    lines = ["# Training-only numbers", "",
             "Test accuracy on the whole test split after the last epoch, read from each model's checkpoint by "
             "`python docs/training_runs.py` (or, for a 1-epoch model, which logs none, evaluated then: "
             "`accuracy_from` in the CSV). Training wall times are in the CSV (`train_s`, on a shared CPU: not "
             "a benchmark).", "",
             "| suite | dataset | method | seed | precision | channels-last | epochs | test accuracy | checkpoint |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.suite} | {r.dataset} | {r.method} | {r.seed} | {r.precision} | "
                     f"{'yes' if r.channels_last else 'no'} | {r.epochs} | {r.test_accuracy:.2%} | `{r.checkpoint}` |")
    (OUT / "training_runs.md").write_text("\n".join(lines) + "\n")
    print(f"{len(table)} trained models -> {OUT}")


if __name__ == "__main__":
    main()
