"""SAN benchmarks: the aggregation operator and the self-attention module against their references, san10 models
against resnet50 / resnet26 (inference and training step, time and peak memory), and ``torch.compile`` cold starts
(each in a fresh process with an empty compiler cache).

    python scripts/benchmark.py san [--quick] [--compile]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from .common import peak_memory_bytes, sync_for, timed_medians

NAME = "san"
OPTIONS = ("compile",)   # --compile: the cold-start table
DESCRIPTION = "SAN operators and san10 models against resnet50 (about 15 minutes on 2 CPU cores); --compile: cold starts"


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
        t = timed_medians(fns, repeats, sync_for(device))
        mem = {k: peak_memory_bytes(f) for k, f in fns.items()}
        rows.append(dict(shape=f"{name} ({n}x{c}x{hw}x{hw}, Cw={cw}, 7x7)", fast_ms=t["fast"] * 1e3,
                         reference_ms=t["reference"] * 1e3, speedup=t["reference"] / t["fast"],
                         fast_peak_mib=mem["fast"] / 2**20, reference_peak_mib=mem["reference"] / 2**20,
                         memory_ratio=mem["reference"] / max(mem["fast"], 1)))
    return rows


def bench_attention(device, repeats: int, quick: bool) -> list[dict]:
    """Pairwise SAM inference at SAN10 stage shapes: fused path against the unfused tap-loop operators."""
    from relzoo.layers import SelfAttention2d, set_fused_inference

    shapes = [("stage1", 8, 256, 56), ("stage3", 8, 1024, 14)]  # batch 8, 224 px: (N, C, side)
    if quick:
        shapes = [("tiny", 1, 64, 12)]
    rows = []
    for name, n, c, hw in shapes:
        sam = SelfAttention2d("pairwise", c, c // 16, c // 4, 8, 7).to(device).eval()
        x = torch.randn(n, c, hw, hw, device=device)

        def run(fused, sam=sam, x=x):
            def call():
                set_fused_inference(sam, fused)
                with torch.no_grad():
                    sam(x)
            return call

        fns = {"fused": run(True), "unfused": run(False)}
        t = timed_medians(fns, repeats, sync_for(device))
        mem = {k: peak_memory_bytes(f) for k, f in fns.items()}
        rows.append(dict(shape=f"{name} ({n}x{c}x{hw}x{hw}, 7x7)", fused_ms=t["fused"] * 1e3,
                         unfused_ms=t["unfused"] * 1e3, speedup=t["unfused"] / t["fused"],
                         fused_peak_mib=mem["fused"] / 2**20, unfused_peak_mib=mem["unfused"] / 2**20,
                         memory_ratio=mem["unfused"] / max(mem["fused"], 1)))
    return rows


def bench_models(device, repeats: int, train_repeats: int, quick: bool, batch: int, size: int) -> list[dict]:
    """Inference (``torch.no_grad``) and training steps (forward + backward + SGD step) of whole models, as ratios
    against resnet50 (resnet26 in quick mode) measured in the same run, with peak memory of both."""
    import timm

    import relzoo  # noqa: F401
    from relzoo.layers import set_fused_inference

    models = [("san10_pair", {}), ("san10_patch", {}), ("san15_pair", {}), ("san15_patch", {}), ("san19_pair", {}),
              ("san19_patch", {}), ("san10_pair", "unfused"), ("san10_patch", "unfused"),
              ("san10_pair", {"implementation": "reference"}), ("san10_patch", {"implementation": "reference"}),
              ("resnet26", {}), ("resnet50", {})]
    if quick:
        models = [("san10_pair", {}), ("san10_pair", "unfused"), ("san10_patch", {"implementation": "reference"}),
                  ("resnet26", {})]
    built = {}
    for name, kw in models:
        label = name + (" (unfused attention)" if kw == "unfused" else " (reference ops)" if kw else "")
        model = timm.create_model(name, **(kw if isinstance(kw, dict) else {})).to(device).eval()
        built[label] = set_fused_inference(model, kw != "unfused")
    trains = {k for k in built if "unfused" not in k}  # training never runs the fused inference paths
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, 1000, (batch,), device=device)

    def infer(m):
        def f():
            with torch.no_grad():
                m(x)
        return f

    optimizers = {k: torch.optim.SGD(built[k].parameters(), lr=1e-4, momentum=0.9) for k in trains}

    def train_step(k):
        m, opt = built[k], optimizers[k]

        def f():
            m.train()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x).float(), target).backward()
            opt.step()
            m.eval()
        return f

    t_inf = timed_medians({k: infer(m) for k, m in built.items()}, repeats, sync_for(device))
    t_train = timed_medians({k: train_step(k) for k in built if k in trains}, train_repeats, sync_for(device))
    base = "resnet50" if "resnet50" in built else "resnet26"
    rows = []
    for k, m in built.items():
        inf_mem = peak_memory_bytes(infer(m))
        row = dict(model=k, params_m=sum(p.numel() for p in m.parameters()) / 1e6, images_per_s=batch / t_inf[k],
                   vs_baseline=t_inf[base] / t_inf[k], inference_peak_mib=inf_mem / 2**20, baseline=base)
        if k in trains:
            row.update(train_images_per_s=batch / t_train[k], train_vs_baseline=t_train[base] / t_train[k],
                       train_step_peak_mib=peak_memory_bytes(train_step(k)) / 2**20)
        m.zero_grad(set_to_none=True)
        rows.append(row)
    return rows


def compile_probe(spec: dict) -> dict:
    """In a fresh process: eager step time, first compiled call (compile + run), compiled step time, graphs."""
    import timm
    from torch._dynamo.utils import counters

    import relzoo  # noqa: F401

    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = timm.create_model(spec["model"], **spec.get("kwargs", {})).to(device)
    model.train(spec["train"])
    x = torch.randn(spec["batch"], 3, spec["size"], spec["size"], device=device)

    def step(m):
        def f():
            if spec["train"]:
                m(x).float().logsumexp(-1).mean().backward()
            else:
                with torch.no_grad():
                    m(x)
        return f

    compiled = torch.compile(model, backend=spec["backend"])
    sync = sync_for(device)
    sync()
    t0 = time.perf_counter()
    step(compiled)()
    sync()
    cold = time.perf_counter() - t0
    t = timed_medians({"eager": step(model), "compiled": step(compiled)}, spec["repeats"], sync)
    return dict(first_call_s=cold, eager_ms=t["eager"] * 1e3, compiled_ms=t["compiled"] * 1e3,
                graphs=counters["stats"]["unique_graphs"], graph_breaks=sum(counters["graph_break"].values()))


def bench_compile(device, quick: bool, batch: int, size: int, repeats: int) -> list[dict]:
    """Cold ``torch.compile`` of each model, eval and train, each in its own process with an empty cache."""
    models = ["san10_pair", "san10_patch", "resnet50"]
    backend = "inductor"
    if quick:  # the machinery, not the compiler: no code generation
        models, backend = ["san10_pair", "resnet26"], "aot_eager"
    rows = []
    for name in models:
        for train in (False,) if quick else (False, True):
            spec = dict(model=name, train=train, device=str(device), batch=batch, size=size, backend=backend,
                        repeats=repeats)
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
                           TORCHINDUCTOR_FX_GRAPH_CACHE="0", TORCHINDUCTOR_AUTOGRAD_CACHE="0")
                proc = subprocess.run([sys.executable, "-m", "relzoo.benchmarks.san", json.dumps(spec)],
                                      env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"compile probe {spec} failed:\n{proc.stderr[-3000:]}")
            rows.append(dict(model=name, mode="train" if train else "eval", backend=backend,
                             **json.loads(proc.stdout.strip().splitlines()[-1])))
    return rows


def markdown(agg: list[dict], attention: list[dict], models: list[dict], meta: dict) -> str:
    lines = [f"Device: {meta['device']} | torch {meta['torch']} | {meta['threads']} threads | "
             f"{meta['repeats']} interleaved repeats (median; training steps: {meta['train_repeats']})", "",
             "| aggregation fwd+bwd | fast ms | reference ms | speed-up | fast peak MiB | reference peak MiB | "
             "memory ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in agg:
        lines.append(f"| {r['shape']} | {r['fast_ms']:.1f} | {r['reference_ms']:.1f} | **{r['speedup']:.1f}x** | "
                     f"{r['fast_peak_mib']:.1f} | {r['reference_peak_mib']:.1f} | **{r['memory_ratio']:.1f}x** |")
    lines += ["", "| pairwise attention, inference | fused ms | unfused ms | speed-up | fused peak MiB | "
              "unfused peak MiB | memory ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in attention:
        lines.append(f"| {r['shape']} | {r['fused_ms']:.1f} | {r['unfused_ms']:.1f} | **{r['speedup']:.1f}x** | "
                     f"{r['fused_peak_mib']:.1f} | {r['unfused_peak_mib']:.1f} | **{r['memory_ratio']:.1f}x** |")
    base = models[0]["baseline"] if models else "resnet50"
    lines += ["", f"| model (batch {meta['batch']}, {meta['size']} px) | params (M) | inference img/s | vs {base} | "
              f"inference peak MiB | train img/s | vs {base} | train-step peak MiB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in models:
        train = (f"{r['train_images_per_s']:.2f} | {r['train_vs_baseline']:.2f}x | {r['train_step_peak_mib']:.0f}"
                 if "train_images_per_s" in r else "= fused | | ")
        lines.append(f"| {r['model']} | {r['params_m']:.1f} | {r['images_per_s']:.2f} | {r['vs_baseline']:.2f}x | "
                     f"{r['inference_peak_mib']:.0f} | {train} |")
    return "\n".join(lines)


def compile_markdown(rows: list[dict], meta: dict) -> str:
    base = {r["mode"]: r for r in rows if r["model"].startswith("resnet")}
    lines = [f"torch.compile ({rows[0]['backend']}), batch {meta['batch']}, {meta['size']} px, fresh process and empty "
             f"cache per row | {meta['device']} | torch {meta['torch']}", "",
             "| model | mode | first call s | vs " + next(iter(base.values()))["model"] + " | graphs | graph breaks | "
             "eager ms | compiled ms | compiled speed-up |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['first_call_s']:.1f} | "
                     f"{r['first_call_s'] / base[r['mode']]['first_call_s']:.2f}x | {r['graphs']} | "
                     f"{r['graph_breaks']} | {r['eager_ms']:.0f} | {r['compiled_ms']:.0f} | "
                     f"{r['eager_ms'] / r['compiled_ms']:.2f}x |")
    return "\n".join(lines)


def run(args, device: torch.device, meta: dict) -> tuple[dict, str]:
    """The SAN tables (or, with ``args.compile``, the cold-start table): the result rows and their Markdown."""
    if args.compile:
        batch, repeats = (1, 1) if args.quick else (2, 3)
        rows = bench_compile(device, args.quick, batch, meta["size"], repeats)
        meta = dict(meta, batch=batch)
        return dict(meta=meta, compile=rows), compile_markdown(rows, meta)
    torch.manual_seed(0)
    agg = bench_aggregation(device, meta["repeats"], args.quick)
    attention = bench_attention(device, meta["repeats"], args.quick)
    models = bench_models(device, meta["repeats"], meta["train_repeats"], args.quick, meta["batch"], meta["size"])
    return dict(meta=meta, aggregation=agg, attention=attention, models=models), markdown(agg, attention, models, meta)


if __name__ == "__main__":   # one compile measurement, in the fresh process bench_compile starts
    print(json.dumps(compile_probe(json.loads(sys.argv[1]))))
