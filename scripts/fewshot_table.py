"""The built-in few-shot benchmark: ProtoNet, ProtoNet + SimCLR episodes, CrossTransformers and CrossTransformers +
SimCLR episodes with the same backbone, budget and seeds, on two class folds of Fashion-MNIST (fold 0: meta-train
on the even classes, test on the odd ones; fold 1: the other way round) and, cross-domain, on scikit-learn's digits.
Each model is evaluated the way its official configuration is (CTX with BatchNorm's running statistics, ProtoNet
with each episode's support moments: `test_bn_stats`).

Prints one markdown table per fold, each cell the mean over seeds of the mean accuracy (%), the spread across seeds
(standard deviation of the per-seed means) and the mean 95% CI of the test episodes, and writes them with every
run's results to OUTPUT/table.md and OUTPUT/table.json.

    python scripts/fewshot_table.py --output_dir outputs/fewshot_table [--seeds 0,1,2] [--folds 0,1] [--rows 0,1,2,3]
        [--name=value ...]

``--name=value`` pairs are passed on to every run (``FewShotTrainingArguments``). Runs already in OUTPUT/table.json
with the same arguments are kept, not run again (an interrupted table continues where it stopped).
"""
import argparse
import json
import statistics
import typing
from pathlib import Path

from relzoo.train.engine import write_json_atomic
from relzoo.train.fewshot import FewShotTrainingArguments, train_fewshot

ROWS = [("ProtoNet", dict(model="protonet", simclr_probability=0.0)),
        ("ProtoNet + SimCLR episodes", dict(model="protonet", simclr_probability=0.5)),
        ("CTX", dict(model="crosstransformer", simclr_probability=0.0)),
        ("CTX + SimCLR episodes", dict(model="crosstransformer", simclr_probability=0.5))]
EVEN, ODD = "0,2,4,6,8", "1,3,5,7,9"
FOLDS = [dict(train_classes=EVEN, eval_sets=f"fashion_mnist:test:{ODD};digits:all:all"),
         dict(train_classes=ODD, eval_sets=f"fashion_mnist:test:{EVEN};digits:all:all")]


def _is_text(hint) -> bool:
    return hint is str or str in typing.get_args(hint)


# from the annotations, not dataclasses.fields(): transformers' HfArgumentParser rewrites Field.type in place
STRING_FIELDS = {name for name, hint in typing.get_type_hints(FewShotTrainingArguments).items() if _is_text(hint)}


def _value(name: str, text: str):
    """A ``--name=value`` override: text for the string arguments (``backbone_kwargs`` is JSON text), else JSON."""
    if name in STRING_FIELDS:
        return text
    if text in ("true", "false"):
        return text == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _ints(name: str, text: str, allowed: range) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v not in allowed for v in values):
        raise SystemExit(f"--{name} must be comma-separated integers in {allowed.start}..{allowed.stop - 1}, "
                         f"got {text!r}")
    return values


def _more_shots_better(results: list[dict]) -> bool:
    """Whether, on every test set of one run, accuracy rises with the number of shots."""
    by_set: dict[str, list[tuple[int, float]]] = {}
    for x in results:
        by_set.setdefault(x["dataset"], []).append((x["shot"], x["accuracy"]))
    return all(a < b for pairs in by_set.values() for (_, a), (_, b) in zip(sorted(pairs), sorted(pairs)[1:]))


def summarise(runs: list[dict], fold: int, rows: list[int]) -> list[str]:
    """Markdown lines of one fold: per method and test setting, mean over seeds ± spread (CI)."""
    mine = [r for r in runs if r["fold"] == fold and r["row"] in rows]
    if not mine:
        return []
    columns = [(x["dataset"], x["shot"]) for x in mine[0]["results"]]
    seeds = sorted({r["seed"] for r in mine})
    test = FOLDS[fold]["eval_sets"].split(";")[0].split(":")[2]
    lines = [f"Fold {fold}: trained on Fashion-MNIST classes {FOLDS[fold]['train_classes']}, tested on {test} and "
             f"on digits; seeds {seeds}. Cells: mean over seeds ± spread across seeds (sd), [mean 95% CI].", "",
             "| method | " + " | ".join(f"{d} {k}-shot" for d, k in columns) + " | more shots better, every seed | train time |",
             "|---" * (len(columns) + 3) + "|"]
    for i in rows:
        done = sorted((r for r in mine if r["row"] == i), key=lambda r: r["seed"])
        if not done:
            continue
        cells = []
        for c, _ in enumerate(columns):
            accs = [100 * r["results"][c]["accuracy"] for r in done]
            cis = [100 * r["results"][c]["ci95"] for r in done]
            spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
            cells.append(f"{statistics.mean(accs):.2f}{spread} [{statistics.mean(cis):.2f}]")
        more_shots = all(_more_shots_better(r["results"]) for r in done)
        time = statistics.mean(r["train_time_s"] for r in done)
        lines.append(f"| {ROWS[i][0]} | " + " | ".join(cells) + f" | {'yes' if more_shots else 'NO'} | {time:.0f} s |")
    return lines


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/fewshot_table")
    parser.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))), help="which methods (indices)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--folds", default="0,1", help="class folds: 0 (train even, test odd), 1 (train odd, test even)")
    known, rest = parser.parse_known_args(argv)
    rows = _ints("rows", known.rows, range(len(ROWS)))
    folds = _ints("folds", known.folds, range(len(FOLDS)))
    seeds = _ints("seeds", known.seeds, range(2 ** 31))
    overrides = {}
    for item in rest:  # --name=value pairs passed on to FewShotTrainingArguments
        name, _, value = item.removeprefix("--").partition("=")
        overrides[name] = _value(name, value)
    out = Path(known.output_dir)
    runs = json.loads((out / "table.json").read_text())["runs"] if (out / "table.json").is_file() else []
    for fold in folds:
        for seed in seeds:
            for i in rows:
                arguments = {**FOLDS[fold], "seed": seed, **overrides, **ROWS[i][1]}
                key = (fold, seed, i)
                if any((r["fold"], r["seed"], r["row"]) == key and r["arguments"] == arguments for r in runs):
                    print(f"fold {fold} seed {seed} {ROWS[i][0]}: kept from {out / 'table.json'}")
                    continue
                summary = train_fewshot(FewShotTrainingArguments(
                    **arguments, output_dir=str(out / f"fold{fold}_seed{seed}_row{i}"), save_model=False, overwrite=True))
                runs = [r for r in runs if (r["fold"], r["seed"], r["row"]) != key]
                runs.append({"fold": fold, "seed": seed, "row": i, "method": ROWS[i][0], "arguments": arguments,
                             "results": summary["results"], "train_time_s": summary["train_time_s"],
                             "steps": summary["steps"]})
                runs.sort(key=lambda r: (r["fold"], r["seed"], r["row"]))
                write_json_atomic(out / "table.json", {"runs": runs})   # after every run
    lines = []
    for fold in folds:
        lines += summarise(runs, fold, rows) + [""]
    table = "\n".join(lines).rstrip() + "\n"
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    return table


if __name__ == "__main__":
    main()
