#!/usr/bin/env python
"""Side-by-side benchmarks: every number is a ratio against a reference measured in the same run.

    python scripts/benchmark.py san              # the full SAN tables (about 45 minutes on 2 CPU cores)
    python scripts/benchmark.py san --profile    # where a SAN step spends its time, per operator (1 minute)
    python scripts/benchmark.py san --quick      # tiny shapes, to check the script itself
    python scripts/benchmark.py san --compile    # torch.compile cold start and compiled speed (about 8 minutes)
    python scripts/benchmark.py san --skip_operators --timm_benchmark ../pytorch-image-models/benchmark.py
                                                 # the model table beside timm's own benchmark.py, same rounds
    python scripts/benchmark.py ctx              # CrossTransformers head and whole episodes, fast vs reference
    python scripts/benchmark.py hsnet            # centre-pivot vs dense 4D conv; HSNet-ResNet50 episodes vs the
                                                 # official computation order (about 5 minutes on 2 CPU cores)
    python scripts/benchmark.py plugins          # training step and inference with / without BatchFormer V1, V2 and
                                                 # API-Net, resnet18 and deit_tiny, batch 64 (about 10 minutes)

Times are medians over interleaved repeats (candidate and reference alternate, so drift hits both alike).
Peak memory is the high-water mark of tensor allocations recorded by the PyTorch profiler (CPU or GPU), relative
to what was allocated before the measured call. ``--compile`` measures each model's first ``torch.compile`` call
in a fresh process with an empty compiler cache (what a user waits for), next to resnet50 measured the same way.
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform

import torch


def benchmarks() -> dict:
    """``{command-line name: module}`` of every registered family's benchmark (families may share one)."""
    import relzoo  # noqa: F401  (registers the families)
    from relzoo.registry import families

    modules = [importlib.import_module(f.benchmark) for f in families() if f.benchmark]
    return {m.NAME: m for m in dict.fromkeys(modules)}


def main(argv=None) -> dict:
    available = benchmarks()
    parser = argparse.ArgumentParser(description="relzoo benchmarks (ratios against references in the same run)",
                                     epilog="\n".join(f"{n}: {m.DESCRIPTION}" for n, m in available.items()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=list(available), help="which benchmark to run")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks the script, not the speed")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved repeats, or rounds of the model tables (default 7, quick 1)")
    parser.add_argument("--train_repeats", type=int, default=None,
                        help="training-step repeats or rounds (default 3, quick 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    owners = {}   # option dest -> the benchmark that defines it
    for name, module in available.items():
        if hasattr(module, "add_arguments"):
            group = parser.add_argument_group(f"{name} options")
            before = {a.dest for a in parser._actions}
            module.add_arguments(group)
            owners.update({a.dest: (name, a) for a in parser._actions if a.dest not in before})
    args = parser.parse_args(argv)
    for dest, (owner, action) in owners.items():
        if owner != args.family and getattr(args, dest) != action.default:
            parser.error(f"{action.option_strings[0]} is for {owner}, got it with {args.family}")
    for dest in ("repeats", "train_repeats"):
        if getattr(args, dest) is not None and getattr(args, dest) < 1:
            parser.error(f"--{dest} must be at least 1, got {getattr(args, dest)}")
    repeats = args.repeats or (1 if args.quick else 7)
    train_repeats = args.train_repeats or (1 if args.quick else 3)
    device = torch.device(args.device)
    batch, size = (1, 128) if args.quick else (8, 224)
    meta = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else
                f"CPU ({platform.processor() or platform.machine()})", torch=torch.__version__,
                threads=torch.get_num_threads(), repeats=repeats, train_repeats=train_repeats, batch=batch, size=size)
    result, table = available[args.family].run(args, device, meta)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
