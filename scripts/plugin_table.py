"""The built-in plug-in comparison: the same timm network, budget and seed trained plainly and with each training-only
plug-in. BatchFormer V1 / V2 on Fashion-MNIST-LT (imbalance 100; overall and many / medium / few-shot accuracy on the
balanced test set), API-Net on Fashion-MNIST (overall, and the four confusable upper-body classes T-shirt/top,
Pullover, Coat, Shirt). Prints one markdown table and writes it with the raw results to OUTPUT/table.md and
OUTPUT/table.json.

    python scripts/plugin_table.py --output_dir outputs/plugin_table [--rows 0,1] [--name=value ...]

``--name=value`` pairs are passed on to every run (``ClassifierTrainingArguments``); rows fix the dataset and plug-in.
Rows already in OUTPUT/table.json with the same arguments are kept, not run again (so an interrupted table
continues where it stopped, and ``--rows`` can add or redo rows).
"""
import argparse
import json
from pathlib import Path

from relzoo.train import ClassifierTrainingArguments, train_classifier
from relzoo.train.engine import write_json_atomic

COMMON = dict(model="resnet18", in_chans=1, image_size=32, batch_size=64, eval_samples=10000, seed=0, log_every=50)
LT = dict(dataset="fashion_mnist_lt", epochs=6, max_steps=0)           # 232 steps an epoch: 1,392 steps
FM = dict(dataset="fashion_mnist", epochs=2, max_steps=1200)           # 1,200 steps (~1.3 epochs)
ROWS = [("Fashion-MNIST-LT", "baseline", dict(LT, plugin="none")),
        ("Fashion-MNIST-LT", "+ BatchFormer (V1, lr x0.1)", dict(LT, plugin="batchformer", plugin_lr_scale=0.1)),
        ("Fashion-MNIST-LT", "+ BatchFormerV2 (after layer3)", dict(LT, plugin="batchformer_v2")),
        ("Fashion-MNIST", "baseline", dict(FM, plugin="none")),
        ("Fashion-MNIST", "+ API-Net (8 classes x 8)", dict(FM, plugin="apinet", samples_per_class=8))]
CONFUSABLE = (0, 2, 4, 6)   # T-shirt/top, Pullover, Coat, Shirt


def _value(text: str):
    if text in ("true", "false"):
        return text == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _cell(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/plugin_table")
    parser.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))), help="which rows (indices)")
    known, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:
        name, _, value = item.removeprefix("--").partition("=")
        overrides[name] = _value(value)
    out = Path(known.output_dir)
    done = json.loads((out / "table.json").read_text()) if (out / "table.json").is_file() else []
    results = {r["row"]: r for r in done if "row" in r}
    for i in map(int, known.rows.split(",")):
        dataset, name, setting = ROWS[i]
        arguments = {**COMMON, **setting, **overrides}
        if i in results and results[i]["arguments"] == arguments:
            print(f"row {i} ({dataset}, {name}): kept from {out / 'table.json'}")
            continue
        summary = train_classifier(ClassifierTrainingArguments(**arguments, output_dir=str(out / f"row{i}"),
                                                               save_model=False, overwrite=True))
        per_class = summary["per_class_top1"]
        confusable = [per_class[c] for c in CONFUSABLE if c in per_class]
        results[i] = {"row": i, "dataset": dataset, "method": name, "arguments": arguments, "top1": summary["top1"],
                      "many": summary["many_top1"], "medium": summary["medium_top1"], "few": summary["few_top1"],
                      "confusable": sum(confusable) / len(confusable), "per_class_top1": per_class,
                      "steps": summary["steps"], "train_time_s": summary["train_time_s"]}
        write_json_atomic(out / "table.json", [results[k] for k in sorted(results)])   # after every row
    results = [results[k] for k in sorted(results)]
    lines = ["| dataset | method | top-1 | many | medium | few | T-shirt/Pullover/Coat/Shirt | steps | train time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lt = r["dataset"].endswith("-LT")
        lines.append(f"| {r['dataset']} | {r['method']} | {_cell(r['top1'])} | "
                     + " | ".join(_cell(r[k]) if lt else "-" for k in ("many", "medium", "few"))
                     + f" | {_cell(r['confusable'])} | {r['steps']} | {r['train_time_s']:.0f} s |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
