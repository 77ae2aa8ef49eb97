#!/usr/bin/env python
"""Side-by-side benchmarks: every number is a ratio against a reference measured in the same run.

    python scripts/benchmark.py san              # the full SAN table (about 10 minutes on 2 CPU cores)
    python scripts/benchmark.py san --quick      # tiny shapes, to check the script itself

Times are medians over interleaved repeats (candidate and reference alternate, so drift hits both alike).
Peak memory is the high-water mark of tensor allocations recorded by the PyTorch profiler (CPU or GPU), relative
to what was allocated before the measured call.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def peak_memory_bytes(fn) -> int:
    """Peak extra bytes allocated by tensors while ``fn()`` runs (profiler allocation events, all threads)."""
    from torch.profiler import profile

    with profile(profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def timed_medians(fns: dict, repeats: int, sync=lambda: None) -> dict:
    """Median seconds of each callable, run in interleaved rounds after one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_aggregation(device, repeats: int, quick: bool) -> list[dict]:
    from relzoo.layers.san import aggregation, aggregation_reference

    # SAN10 stage 1 and stage 2 at 224 px, batch 8: mid channels C/4, Cw = C/32, 7x7 footprint
    shapes = [("stage1", 8, 64, 56, 8), ("stage2", 8, 128, 28, 16)]
    if quick:
        shapes = [("tiny", 2, 16, 12, 2)]
    rows = []
    for name, n, c, hw, cw in shapes:
        x = torch.randn(n, c, hw, hw, device=device, requires_grad=True)
        w = torch.randn(n, cw, 49, hw * hw, device=device, requires_grad=True)
        g = torch.randn(n, c, hw, hw, device=device)

        def run(op, x=x, w=w, g=g):
            def step():
                x.grad = w.grad = None
                op(x, w, 7).backward(g)
            return step

        fns = {"fast": run(aggregation), "reference": run(aggregation_reference)}
        t = timed_medians(fns, repeats, _sync(device))
        mem = {k: peak_memory_bytes(f) for k, f in fns.items()}
        rows.append(dict(shape=f"{name} ({n}x{c}x{hw}x{hw}, Cw={cw}, 7x7)", fast_ms=t["fast"] * 1e3,
                         reference_ms=t["reference"] * 1e3, speedup=t["reference"] / t["fast"],
                         fast_peak_mib=mem["fast"] / 2**20, reference_peak_mib=mem["reference"] / 2**20,
                         memory_ratio=mem["reference"] / max(mem["fast"], 1)))
    return rows


def _sync(device):
    return (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)


def bench_models(device, repeats: int, quick: bool, batch: int, size: int) -> list[dict]:
    import timm

    import relzoo  # noqa: F401

    models = [("san10_pair", {}), ("san10_patch", {}), ("san19_pair", {}), ("san19_patch", {}),
              ("san10_pair", {"implementation": "reference"}), ("san10_patch", {"implementation": "reference"}),
              ("resnet26", {}), ("resnet50", {})]
    if quick:
        models = [("san10_patch", {}), ("san10_patch", {"implementation": "reference"}), ("resnet26", {})]
    label = {i: name + (" (reference ops)" if kw else "") for i, (name, kw) in enumerate(models)}
    built = {label[i]: timm.create_model(name, **kw).to(device).eval() for i, (name, kw) in enumerate(models)}
    x = torch.randn(batch, 3, size, size, device=device)

    def infer(m):
        def f():
            with torch.no_grad():
                m(x)
        return f

    t = timed_medians({k: infer(m) for k, m in built.items()}, repeats, _sync(device))
    base = "resnet50" if "resnet50" in built else "resnet26"
    rows = []
    for k, m in built.items():
        m.train()

        def step(m=m):
            m.zero_grad(set_to_none=True)
            m(x).float().logsumexp(-1).mean().backward()

        step()
        train_mem = peak_memory_bytes(step)
        m.zero_grad(set_to_none=True)
        m.eval()
        rows.append(dict(model=k, params_m=sum(p.numel() for p in m.parameters()) / 1e6, images_per_s=batch / t[k],
                         vs_baseline=t[base] / t[k], train_step_peak_mib=train_mem / 2**20))
    for r in rows:
        r["baseline"] = base
    return rows


def markdown(agg: list[dict], models: list[dict], meta: dict) -> str:
    lines = [f"Device: {meta['device']} | torch {meta['torch']} | {meta['threads']} threads | "
             f"{meta['repeats']} interleaved repeats (median)", "",
             "| aggregation fwd+bwd | fast ms | reference ms | speed-up | fast peak MiB | reference peak MiB | "
             "memory ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in agg:
        lines.append(f"| {r['shape']} | {r['fast_ms']:.1f} | {r['reference_ms']:.1f} | **{r['speedup']:.1f}x** | "
                     f"{r['fast_peak_mib']:.1f} | {r['reference_peak_mib']:.1f} | **{r['memory_ratio']:.1f}x** |")
    base = models[0]["baseline"] if models else "resnet50"
    lines += ["", f"| model (batch {meta['batch']}, {meta['size']} px) | params (M) | inference img/s | vs {base} | "
              "train-step peak MiB |", "|---|---:|---:|---:|---:|"]
    for r in models:
        lines.append(f"| {r['model']} | {r['params_m']:.1f} | {r['images_per_s']:.2f} | {r['vs_baseline']:.2f}x | "
                     f"{r['train_step_peak_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="relzoo benchmarks (ratios against references in the same run)")
    parser.add_argument("family", choices=["san"], help="which family to benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks the script, not the speed")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 7, quick 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 7)
    device = torch.device(args.device)
    batch, size = (1, 128) if args.quick else (8, 224)
    meta = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else
                f"CPU ({platform.processor() or platform.machine()})", torch=torch.__version__,
                threads=torch.get_num_threads(), repeats=repeats, batch=batch, size=size)
    torch.manual_seed(0)
    agg = bench_aggregation(device, repeats, args.quick)
    models = bench_models(device, repeats, args.quick, batch, size)
    print(markdown(agg, models, meta))
    result = dict(meta=meta, aggregation=agg, models=models)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
