"""SAN benchmarks: the aggregation operator and the self-attention module against their references, san10 models
against resnet50 / resnet26 (inference and training step, time and peak memory), and ``torch.compile`` cold starts
(each in a fresh process with an empty compiler cache).

    python scripts/benchmark.py san [--quick] [--compile]
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from .common import interleaved_bursts, peak_memory_bytes, ratios, spread, sync_for, timed_medians

NAME = "san"
DESCRIPTION = ("SAN operators (CPU kernels against the PyTorch operators) and SAN models against resnet50 (about 45 "
               "minutes on 2 CPU cores; --repeats 3: 20); --compile: cold starts; --profile: per-operator profile")


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
    """Both released self-attentions at SAN10 stage shapes (batch 8, 224 px), inference and a training step
    (forward + backward, batch statistics in the weight network): the compiled CPU kernels against the PyTorch
    operators (:func:`relzoo.layers.san_native.disabled`: the fused PyTorch inference paths, the tap-loop operators in
    training). Without the kernels (not built, another device) the rows compare the PyTorch operators with
    themselves and say so."""
    from relzoo.layers import SelfAttention2d, san_native

    shapes = [("stage1", 8, 256, 56), ("stage3", 8, 1024, 14)]  # (N, C, side); 7x7 footprints
    if quick:
        shapes = [("tiny", 1, 64, 12)]
    kernels = san_native.available() and device.type == "cpu"
    rows = []
    for sa_type in ("pairwise", "patchwise"):
        for name, n, c, hw in shapes:
            sam = SelfAttention2d(sa_type, c, c // 16, c // 4, 8, 7).to(device)
            x = torch.randn(n, c, hw, hw, device=device, requires_grad=True)
            g = torch.randn(n, c // 4, hw, hw, device=device)
            for mode in ("inference", "train"):
                def run(native, sam=sam, x=x, g=g, mode=mode):
                    def call():
                        with (contextlib.nullcontext() if native else san_native.disabled()):
                            if mode == "inference":
                                sam.eval()
                                with torch.no_grad():
                                    sam(x)
                            else:
                                sam.train()
                                x.grad = None
                                sam.zero_grad(set_to_none=True)
                                sam(x).backward(g)
                    return call

                fns = {"kernels": run(kernels), "pytorch": run(False)}
                t = timed_medians(fns, repeats, sync_for(device))
                mem = {k: peak_memory_bytes(f) for k, f in fns.items()}
                rows.append(dict(sa_type=sa_type, mode=mode, shape=f"{name} ({n}x{c}x{hw}x{hw}, 7x7)",
                                 kernels=kernels, kernels_ms=t["kernels"] * 1e3, pytorch_ms=t["pytorch"] * 1e3,
                                 speedup=t["pytorch"] / t["kernels"], kernels_peak_mib=mem["kernels"] / 2**20,
                                 pytorch_peak_mib=mem["pytorch"] / 2**20,
                                 memory_ratio=mem["pytorch"] / max(mem["kernels"], 1)))
    return rows


MODELS = [("san10_pair", {}), ("san10_patch", {}), ("san15_pair", {}), ("san15_patch", {}), ("san19_pair", {}),
          ("san19_patch", {}), ("san10_pair", "pytorch"), ("san10_patch", "pytorch"),
          ("san10_pair", {"implementation": "reference"}), ("san10_patch", {"implementation": "reference"}),
          ("resnet26", {}), ("resnet50", {})]
QUICK_MODELS = [("san10_pair", {}), ("san10_pair", "pytorch"), ("san10_patch", {"implementation": "reference"}),
                ("resnet26", {})]
TIMM_MODELS = ["san10_pair", "san10_patch", "resnet26", "resnet50"]


KINDS = {"pytorch": "pytorch", "unfused": "unfused", "reference": {"implementation": "reference"}}


def parse_model(text: str) -> tuple[str, object]:
    """``name`` or ``name:kind`` (``pytorch``: the CPU kernels off; ``unfused``: also the fused inference paths;
    ``reference``: the pad + unfold operators) -> ``(name, kwargs)`` as in :data:`MODELS`."""
    name, _, kind = text.partition(":")
    if kind and kind not in KINDS:
        raise SystemExit(f"benchmark.py san: error: --models takes NAME or NAME:KIND with KIND one of "
                         f"{sorted(KINDS)}, got {text!r}")
    return name, KINDS[kind] if kind else {}


def _label(name: str, kw) -> str:
    """Row names: ``"pytorch"`` runs the model with the CPU kernels disabled (the PyTorch operators, fused in
    inference: what relzoo ran before the kernels), ``"unfused"`` also without the fused inference paths, a dict is
    model arguments (``implementation="reference"``: pad + unfold operators)."""
    if isinstance(kw, str):
        return name + {"pytorch": " (PyTorch operators)", "unfused": " (unfused attention)"}[kw]
    return name + (" (reference ops)" if kw else "")


def _model_steps(model, x, target):
    """``(infer, train_step)`` of a model in eval mode: an inference step under ``torch.inference_mode`` (as timm's
    benchmark.py) and a training step (forward + cross-entropy + backward + SGD step with momentum)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def infer():
        with torch.inference_mode():
            model(x)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x).float(), target).backward()
        optimizer.step()
        model.eval()

    return infer, train_step


def model_probe(spec: dict) -> dict:
    """In a fresh process holding this one model (as timm's benchmark.py runs): per-step seconds of ``burst``
    consecutive inference steps (``torch.inference_mode``; when ``spec["infer"]``) and (when ``spec["train"]``) of
    ``train_burst`` training steps (forward + backward + SGD step with momentum), after warm-up steps; peak memory of
    one step of each when ``spec["memory"]``."""
    import timm

    import relzoo  # noqa: F401
    from relzoo.layers import san_native, set_fused_inference

    device, kw = torch.device(spec["device"]), spec["kwargs"]
    if kw in ("pytorch", "unfused"):   # this process never runs the CPU kernels (the guard lives as long as it)
        model_probe.kernels_off = san_native.disabled()
        model_probe.kernels_off.__enter__()
    torch.manual_seed(0)
    model = timm.create_model(spec["model"], **(kw if isinstance(kw, dict) else {})).to(device).eval()
    set_fused_inference(model, kw != "unfused")
    x = torch.randn(spec["batch"], 3, spec["size"], spec["size"], device=device)
    target = torch.randint(0, 1000, (spec["batch"],), device=device)
    sync = sync_for(device)

    infer, train_step = _model_steps(model, x, target)
    out = dict(params_m=sum(p.numel() for p in model.parameters()) / 1e6, pid=os.getpid(),
               kernels=san_native.usable(x))
    steps = [("infer", infer, spec["burst"], spec["warmup"])] if spec["infer"] else []
    if spec["train"]:
        steps.append(("train", train_step, spec["train_burst"], spec["train_warmup"]))
    for mode, fn, burst, warmup in steps:
        out[f"{mode}_s"] = interleaved_bursts({mode: fn}, 1, burst, warmup, sync)[mode][0]
        if spec["memory"]:
            out[f"{mode}_peak_mib"] = peak_memory_bytes(fn) / 2**20
    return out


def _probe(spec: dict, env: dict | None = None) -> dict:
    """Run one probe (``model_probe`` or ``compile_probe``) in a fresh Python process; its result dictionary."""
    proc = subprocess.run([sys.executable, "-m", "relzoo.benchmarks.san", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark probe {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_models(device, rounds: int, train_rounds: int, quick: bool, batch: int, size: int, burst: int = 3,
                 train_burst: int = 2, names: list[str] | None = None) -> list[dict]:
    """Inference (``torch.inference_mode``, as timm's benchmark.py) and training steps (forward + backward + SGD
    step) of whole models, against resnet50 (resnet26 in quick mode) in the same rounds, with peak memory of both.

    Every model is measured in a fresh process of its own that holds only that model, as timm's benchmark.py runs
    (one process holding all twelve models with their gradients and momentum ran the training steps about 20 %
    slower than timm's). A round starts one such process per model in turn (rotating order); each runs warm-up steps,
    then ``burst`` consecutive inference steps (``train_burst`` training steps in the first ``train_rounds`` rounds).
    A row's throughput is the median over rounds, its ratio the median of the per-round ratios, and both carry their
    min-max over rounds. Peak memory is taken in the first round."""
    models = QUICK_MODELS if quick else MODELS
    if names:
        models = [parse_model(n) for n in names]
    labels = {_label(n, kw): (n, kw) for n, kw in models}
    base = "resnet50" if "resnet50" in labels else "resnet26" if "resnet26" in labels else next(iter(labels))
    trains = {k for k in labels if "unfused" not in k}  # training never runs the fused inference paths
    runs = {k: [] for k in labels}
    order = list(labels)
    for r in range(max(rounds, train_rounds)):
        for k in order[r % len(order):] + order[:r % len(order)]:
            name, kw = labels[k]
            spec = dict(probe="model", model=name, kwargs=kw, device=str(device), batch=batch, size=size,
                        infer=r < rounds, burst=burst, warmup=2, train=k in trains and r < train_rounds,
                        train_burst=train_burst, train_warmup=1, memory=r == 0)
            runs[k].append(_probe(spec))
    rows = []
    for k, results in runs.items():
        first = results[0]
        t_inf, t_base = [x["infer_s"] for x in results[:rounds]], [x["infer_s"] for x in runs[base][:rounds]]
        speed, ratio = spread(batch / t for t in t_inf), spread(ratios(t_inf, t_base))
        row = dict(model=k, batch=batch, params_m=first["params_m"], images_per_s=speed[0],
                   images_per_s_range=speed[1:], vs_baseline=ratio[0], vs_baseline_range=ratio[1:],
                   inference_peak_mib=first["infer_peak_mib"], baseline=base, rounds=rounds, train_rounds=train_rounds,
                   processes=[x["pid"] for x in results], kernels=first["kernels"])
        if k in trains:
            t_train = [x["train_s"] for x in results[:train_rounds]]
            t_base = [x["train_s"] for x in runs[base][:train_rounds]]
            speed, ratio = spread(batch / t for t in t_train), spread(ratios(t_train, t_base))
            row.update(train_images_per_s=speed[0], train_images_per_s_range=speed[1:], train_vs_baseline=ratio[0],
                       train_vs_baseline_range=ratio[1:], train_step_peak_mib=first["train_peak_mib"])
        rows.append(row)
    return rows


def timm_benchmark_once(script: str, model: str, batch: int, size: int, device, warm: int, iters: int,
                        bench: str = "both") -> dict:
    """One run of timm's own benchmark.py (in a fresh process, relzoo imported first): its result dictionary."""
    cmd = [sys.executable, "-m", "relzoo.timm_scripts", script, "--model", model, "--bench", bench, "-b", str(batch),
           "--img-size", str(size), "--device", str(device), "--num-warm-iter", str(warm), "--num-bench-iter",
           str(iters), "--no-retry"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or "--result" not in proc.stdout:
        raise RuntimeError(f"timm's benchmark.py failed on {model} (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"{(proc.stderr or proc.stdout)[-3000:]}")
    result = json.loads(proc.stdout.split("--result", 1)[1])
    if "error" in result:
        raise RuntimeError(f"timm's benchmark.py reported an error on {model}: {result['error']}")
    return result


def bench_timm(script: str, device, names: list[str], batch: int, size: int, rounds: int, warm: int,
               iters: int) -> list[dict]:
    """timm's own benchmark.py (``--bench both``) on each model, one process per model per round, rounds interleaved
    with rotating order; ratios against resnet50 (else the last model) are taken within each round."""
    runs = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(timm_benchmark_once(script, name, batch, size, device, warm, iters))
    base = "resnet50" if "resnet50" in names else names[-1]
    rows = []
    for name in names:
        row = dict(model=name, batch=batch, baseline=base, rounds=rounds, warm_iter=warm, bench_iter=iters)
        for mode in ("infer", "train"):
            speed = [run[f"{mode}_samples_per_sec"] for run in runs[name]]
            median, low, high = spread(speed)
            row.update({f"{mode}_images_per_s": median, f"{mode}_images_per_s_range": (low, high)})
            median, low, high = spread(s / b[f"{mode}_samples_per_sec"] for s, b in zip(speed, runs[base]))
            row.update({f"{mode}_vs_baseline": median, f"{mode}_vs_baseline_range": (low, high)})
        rows.append(row)
    return rows


def machine_limits(device, repeats: int = 5) -> dict:
    """The device's measured ceilings: float32 matrix-multiply GFLOP/s (2048^3, the best of ``repeats``) and memory
    bandwidth GB/s (a 256 MiB copy: bytes read + written, the best of ``repeats``)."""
    sync = sync_for(device)
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    src = torch.randn(64 * 2**20, device=device)
    dst = torch.empty_like(src)
    best = {"matmul": float("inf"), "copy": float("inf")}
    for _ in range(repeats):
        for name, fn in (("matmul", lambda: torch.mm(a, b)), ("copy", lambda: dst.copy_(src))):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return dict(matmul_gflops=2 * 2048**3 / best["matmul"] / 1e9,
                copy_gbytes_per_s=2 * src.numel() * 4 / best["copy"] / 1e9)


def profile_models(device, names: list[str], batch: int, size: int, top: int = 8) -> list[dict]:
    """Where a step's time goes: ``torch.profiler`` over one inference step and one training step of each model
    (after warm-up), self time per operator, the top ``top`` operators and the rest; FLOPs of the matrix products
    and convolutions the profiler counts."""
    import timm
    from torch.profiler import ProfilerActivity, profile

    import relzoo  # noqa: F401

    rows = []
    for name in names:
        torch.manual_seed(0)
        model = timm.create_model(name).to(device).eval()
        x = torch.randn(batch, 3, size, size, device=device)
        target = torch.randint(0, 1000, (batch,), device=device)
        infer, train_step = _model_steps(model, x, target)
        for mode, fn in (("inference", infer), ("train", train_step)):
            fn()
            fn()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            sync_for(device)()
            t0 = time.perf_counter()
            with profile(activities=activities, with_flops=True) as prof:
                fn()
                sync_for(device)()
            wall = time.perf_counter() - t0
            key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
            events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
            total = sum(getattr(e, key) for e in events) or 1.0
            ops = [dict(op=e.key, ms=getattr(e, key) / 1e3, share=getattr(e, key) / total, calls=e.count,
                        gflop=(e.flops or 0) / 1e9) for e in events[:top]]
            rest = sum(getattr(e, key) for e in events[top:])
            ops.append(dict(op="(all others)", ms=rest / 1e3, share=rest / total,
                            calls=sum(e.count for e in events[top:]), gflop=sum((e.flops or 0) for e in
                                                                                events[top:]) / 1e9))
            rows.append(dict(model=name, mode=mode, batch=batch, profiled_s=wall, ops=ops,
                             gflop=sum((e.flops or 0) for e in events) / 1e9))
    return rows


def profile_markdown(rows: list[dict], limits: dict, meta: dict) -> str:
    lines = [f"Per-operator profile (torch.profiler, self time, one step after warm-up; the profiler itself slows a "
             f"step) | batch {rows[0]['batch'] if rows else ''}, {meta['size']} px | {meta['device']} | measured "
             f"ceilings: matmul {limits['matmul_gflops']:.0f} GFLOP/s (fp32 2048^3), memory copy "
             f"{limits['copy_gbytes_per_s']:.1f} GB/s (256 MiB, read + write)"]
    for r in rows:
        flops_time = r["gflop"] / limits["matmul_gflops"]
        lines += ["", f"**{r['model']}, {r['mode']}**: {r['profiled_s'] * 1e3:.0f} ms profiled; the profiler counts "
                  f"{r['gflop']:.1f} GFLOP of products / convolutions, {flops_time * 1e3:.0f} ms at the measured "
                  f"matmul ceiling ({flops_time / r['profiled_s']:.0%} of the step)", "",
                  "| operator | self ms | share | calls | GFLOP |", "|---|---:|---:|---:|---:|"]
        for o in r["ops"]:
            lines.append(f"| `{o['op']}` | {o['ms']:.1f} | {o['share']:.0%} | {o['calls']} | {o['gflop']:.2f} |")
    return "\n".join(lines)


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
                result = _probe(dict(spec, probe="compile"), env)
            rows.append(dict(model=name, mode="train" if train else "eval", backend=backend, **result))
    return rows


def markdown(agg: list[dict], attention: list[dict], models: list[dict], meta: dict) -> str:
    lines = [f"Device: {meta['device']} | torch {meta['torch']} | {meta['threads']} threads | operators: medians of "
             f"{meta['repeats']} interleaved repeats | models: each in a fresh process of its own per round, "
             f"{meta['repeats']} rounds of {meta['burst']} steps (training steps: {meta['train_repeats']} rounds of "
             f"{meta['train_burst']}), rotating order, medians (min–max over rounds)"]
    if agg:
        lines += ["", "| aggregation fwd+bwd | fast ms | reference ms | speed-up | fast peak MiB | reference peak MiB | "
                  "memory ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in agg:
        lines.append(f"| {r['shape']} | {r['fast_ms']:.1f} | {r['reference_ms']:.1f} | **{r['speedup']:.1f}x** | "
                     f"{r['fast_peak_mib']:.1f} | {r['reference_peak_mib']:.1f} | **{r['memory_ratio']:.1f}x** |")
    if attention:
        note = "" if attention[0]["kernels"] else " (kernels unavailable here: PyTorch against itself)"
        lines += ["", f"| self-attention{note} | mode | kernels ms | PyTorch ms | speed-up | kernels peak MiB | "
                  "PyTorch peak MiB | memory ratio |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in attention:
        lines.append(f"| {r['sa_type']} {r['shape']} | {r['mode']} | {r['kernels_ms']:.1f} | {r['pytorch_ms']:.1f} | "
                     f"**{r['speedup']:.1f}x** | {r['kernels_peak_mib']:.1f} | {r['pytorch_peak_mib']:.1f} | "
                     f"**{r['memory_ratio']:.1f}x** |")
    if models:
        lines += ["", models_markdown(models, meta)]
    return "\n".join(lines)


def _ranged(value: float, low_high, digits: int, unit: str = "") -> str:
    low, high = low_high
    return f"{value:.{digits}f}{unit} ({low:.{digits}f}–{high:.{digits}f})"


def models_markdown(models: list[dict], meta: dict) -> str:
    """relzoo's model table: medians over rounds with (min–max over rounds)."""
    base = models[0]["baseline"] if models else "resnet50"
    lines = [f"| model (batch {models[0]['batch'] if models else meta['batch']}, {meta['size']} px) | params (M) | "
             f"inference img/s | vs {base} | inference peak MiB | train img/s | vs {base} | train-step peak MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in models:
        train = (f"{_ranged(r['train_images_per_s'], r['train_images_per_s_range'], 2)} | "
                 f"{_ranged(r['train_vs_baseline'], r['train_vs_baseline_range'], 2, 'x')} | "
                 f"{r['train_step_peak_mib']:.0f}" if "train_images_per_s" in r else "= fused | | ")
        lines.append(f"| {r['model']} | {r['params_m']:.1f} | {_ranged(r['images_per_s'], r['images_per_s_range'], 2)} "
                     f"| {_ranged(r['vs_baseline'], r['vs_baseline_range'], 2, 'x')} | {r['inference_peak_mib']:.0f} "
                     f"| {train} |")
    return "\n".join(lines)


def side_by_side_markdown(models: list[dict], timm_rows: list[dict], meta: dict) -> str:
    """relzoo's benchmark and timm's benchmark.py on the same models in the same run: ratios with their spreads."""
    ours = {r["model"]: r for r in models}
    t0 = timm_rows[0]
    base = t0["baseline"]
    lines = [f"timm's benchmark.py: `--bench both -b {t0['batch']} --img-size {meta['size']} --num-warm-iter "
             f"{t0['warm_iter']} --num-bench-iter {t0['bench_iter']}`, one process per model per round, "
             f"{t0['rounds']} rounds, rotating order, ratios taken within each round (as relzoo's); medians "
             f"(min–max over rounds)", "",
             f"| model (batch {t0['batch']}) | relzoo inference vs {base} | timm inference vs {base} | "
             f"relzoo train vs {base} | timm train vs {base} | timm inference img/s | timm train img/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in timm_rows:
        o = ours.get(r["model"])
        mine = (_ranged(o["vs_baseline"], o["vs_baseline_range"], 2, "x") if o else "",
                _ranged(o["train_vs_baseline"], o["train_vs_baseline_range"], 2, "x") if o and
                "train_vs_baseline" in o else "")
        lines.append(f"| {r['model']} | {mine[0]} | {_ranged(r['infer_vs_baseline'], r['infer_vs_baseline_range'], 2, 'x')}"
                     f" | {mine[1]} | {_ranged(r['train_vs_baseline'], r['train_vs_baseline_range'], 2, 'x')} | "
                     f"{_ranged(r['infer_images_per_s'], r['infer_images_per_s_range'], 2)} | "
                     f"{_ranged(r['train_images_per_s'], r['train_images_per_s_range'], 2)} |")
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


def add_arguments(group) -> None:
    """The SAN benchmark's own options (``scripts/benchmark.py san ...``)."""
    group.add_argument("--compile", action="store_true", help="only the torch.compile cold-start table")
    group.add_argument("--profile", action="store_true",
                       help="only the per-operator profile of san10_pair, san10_patch and resnet50 (or --models), "
                            "inference and training step, with the device's measured matmul and bandwidth ceilings")
    group.add_argument("--models", nargs="+", default=None, metavar="NAME[:KIND]",
                       help="timm names for the model table, KIND pytorch (kernels off), unfused or reference "
                            "(default: SAN10/15/19, PyTorch-operator and reference-operator "
                            "rows, resnet26, resnet50); ratios are against resnet50 when it is listed")
    group.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes of the model table (default 8)")
    group.add_argument("--burst", type=int, default=None,
                       help="consecutive steps of a model in each round (default 3, training steps 2; quick 1)")
    group.add_argument("--skip_operators", action="store_true", help="only the model tables")
    group.add_argument("--timm_benchmark", default=None, metavar="PATH",
                       help="benchmark.py of a pytorch-image-models checkout: also run timm's own benchmark on "
                            f"{', '.join(TIMM_MODELS)} (or --models), interleaved, and print both side by side")
    group.add_argument("--timm_iters", type=int, nargs=2, default=(3, 8), metavar=("WARM", "BENCH"),
                       help="timm benchmark.py's --num-warm-iter and --num-bench-iter (default 3 8)")


def run(args, device: torch.device, meta: dict) -> tuple[dict, str]:
    """The SAN tables (or, with ``args.compile``, the cold-start table): the result rows and their Markdown."""
    if args.compile:
        batch, repeats = (1, 1) if args.quick else (2, 3)
        rows = bench_compile(device, args.quick, batch, meta["size"], repeats)
        meta = dict(meta, batch=batch)
        return dict(meta=meta, compile=rows), compile_markdown(rows, meta)
    if args.profile:
        batch = (args.batch or [meta["batch"]])[0]
        names = args.models or (["san10_pair", "resnet26"] if args.quick else ["san10_pair", "san10_patch", "resnet50"])
        if any(":" in n for n in names):
            raise SystemExit(f"benchmark.py san: error: --profile takes plain model names, got {names}")
        rows, limits = profile_models(device, names, batch, meta["size"]), machine_limits(device)
        meta = dict(meta, batch=batch)
        return dict(meta=meta, profile=rows, limits=limits), profile_markdown(rows, limits, meta)
    for name in ("burst", "timm_iters", "batch"):
        value = getattr(args, name)
        if value is not None and min([value] if isinstance(value, int) else value) < 1:
            raise SystemExit(f"benchmark.py san: error: --{name} must be at least 1, got {value}")
    if args.timm_benchmark and not os.path.isfile(args.timm_benchmark):
        raise SystemExit(f"benchmark.py san: error: --timm_benchmark must be timm's benchmark.py file, got "
                         f"{args.timm_benchmark!r} (not a file)")
    burst = args.burst or (1 if args.quick else 3)
    meta = dict(meta, burst=burst, train_burst=args.burst or (1 if args.quick else 2))
    torch.manual_seed(0)
    agg = [] if args.skip_operators else bench_aggregation(device, meta["repeats"], args.quick)
    attention = [] if args.skip_operators else bench_attention(device, meta["repeats"], args.quick)
    result = dict(meta=meta, aggregation=agg, attention=attention, models=[], timm=[])
    tables = []
    for batch in args.batch or [meta["batch"]]:
        models = bench_models(device, meta["repeats"], meta["train_repeats"], args.quick, batch, meta["size"], burst,
                              meta["train_burst"], args.models)
        result["models"] += models
        tables.append(models_markdown(models, meta))
        if args.timm_benchmark:
            names = ([n for n in args.models if ":" not in n] if args.models else   # timm runs plain names
                     ["san10_pair", "resnet26"] if args.quick else TIMM_MODELS)
            timm_rows = bench_timm(args.timm_benchmark, device, names, batch, meta["size"], meta["train_repeats"],
                                   *args.timm_iters)
            result["timm"] += timm_rows
            tables.append(side_by_side_markdown(models, timm_rows, meta))
    return result, "\n\n".join([markdown(agg, attention, [], meta)] + tables)


if __name__ == "__main__":   # one measurement, in the fresh process bench_models / bench_compile start
    _spec = json.loads(sys.argv[1])
    print(json.dumps({"model": model_probe, "compile": compile_probe}[_spec.pop("probe")](_spec)))
