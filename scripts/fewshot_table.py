"""The built-in few-shot benchmark: ProtoNet vs CrossTransformers vs CrossTransformers + SimCLR episodes, same
backbone, budget and seed, meta-trained on the even Fashion-MNIST classes and tested on the odd ones and on
scikit-learn's digits (cross-domain). Prints one markdown table (mean accuracy ± 95% CI) and writes it with the raw
results to OUTPUT/table.md and OUTPUT/table.json.

    python scripts/fewshot_table.py --output_dir outputs/fewshot_table [any train_fewshot.py argument]
"""
import argparse
import json
from pathlib import Path

from relzoo.train.engine import write_json_atomic
from relzoo.train.fewshot import FewShotTrainingArguments, train_fewshot

ROWS = [("ProtoNet", dict(model="protonet", simclr_probability=0.0)),
        ("ProtoNet + SimCLR episodes", dict(model="protonet", simclr_probability=0.5)),
        ("CTX", dict(model="crosstransformer", simclr_probability=0.0)),
        ("CTX + SimCLR episodes", dict(model="crosstransformer", simclr_probability=0.5))]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/fewshot_table")
    parser.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))), help="which rows (indices)")
    known, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:  # --name=value pairs passed on to FewShotTrainingArguments
        name, _, value = item.removeprefix("--").partition("=")
        overrides[name] = json.loads(value) if value[:1] in "0123456789-[{tf" and value not in ("true", "false") \
            else {"true": True, "false": False}.get(value, value)
    out = Path(known.output_dir)
    results = {}
    for i in map(int, known.rows.split(",")):
        name, setting = ROWS[i]
        args = FewShotTrainingArguments(**{**overrides, **setting, "output_dir": str(out / f"row{i}"),
                                           "save_model": False})
        summary = train_fewshot(args)
        results[name] = {"results": summary["results"], "train_time_s": summary["train_time_s"],
                         "steps": summary["steps"], "arguments": {**overrides, **setting}}
    columns = [(r["dataset"], r["split"], r["shot"]) for r in next(iter(results.values()))["results"]]
    head = "| method | " + " | ".join(f"{d} ({s}) {k}-shot" for d, s, k in columns) + " | train time |"
    lines = [head, "|---" * (len(columns) + 2) + "|"]
    for name, res in results.items():
        cells = [f"{100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f}" for r in res["results"]]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res['train_time_s']:.0f} s |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    write_json_atomic(out / "table.json", results)
    return table


if __name__ == "__main__":
    main()
