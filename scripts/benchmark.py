#!/usr/bin/env python
"""Side-by-side benchmarks: every number is a ratio against a reference measured in the same run.

    python scripts/benchmark.py san              # the full SAN tables (about 15 minutes on 2 CPU cores)
    python scripts/benchmark.py san --quick      # tiny shapes, to check the script itself
    python scripts/benchmark.py san --compile    # torch.compile cold start and compiled speed (about 8 minutes)
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
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
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


def peak_tracked_bytes(fn) -> int:
    """Peak bytes of the tensors created while ``fn()`` runs, followed through the dispatcher by torch's
    ``MemTracker`` (pre-existing tensors not counted). Used where the profiler itself cannot: profiling the
    per-query reference's backward pass (225k events) grows this process by about 20 GiB."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        fn()
    return int(sum(per_device["Total"] for per_device in tracker.get_tracker_snapshot("peak").values()))


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
        t = timed_medians(fns, repeats, _sync(device))
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

    t_inf = timed_medians({k: infer(m) for k, m in built.items()}, repeats, _sync(device))
    t_train = timed_medians({k: train_step(k) for k in built if k in trains}, train_repeats, _sync(device))
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
    sync = _sync(device)
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
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "san", "--_probe", json.dumps(spec)],
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


def bench_ctx_head(device, repeats: int, quick: bool) -> list[dict]:
    """The CrossTransformers head alone (projected features in, logits out) for 5-way 5-shot episodes with 14x14 maps
    and d_k = d_v = 128: fast chunked path against the per-query, per-class reference, at several query counts."""
    from relzoo import CrossTransformerConfig
    from relzoo.layers.crosstransformer import cross_attention_logits, cross_attention_logits_reference

    chunk = CrossTransformerConfig().chunk_size                               # the model's default

    n_way, shots, side, dim = (3, 2, 4, 16) if quick else (5, 5, 14, 128)
    labels = torch.arange(n_way, device=device).repeat_interleave(shots)
    rows = []
    for queries in ((3, 6) if quick else (15, 75, 150)):
        p = side * side
        inputs = [torch.randn(*shape, device=device, requires_grad=True) for shape in
                  ((queries, p, dim), (queries, p, dim), (n_way * shots, p, dim), (n_way * shots, p, dim))]

        def make(train, ref, inputs=inputs):
            def call():
                if train:
                    for t in inputs:
                        t.grad = None
                    out = (cross_attention_logits_reference(*inputs, labels, n_way) if ref
                           else cross_attention_logits(*inputs, labels, n_way, chunk_size=chunk))
                    out.sum().backward()
                else:
                    with torch.no_grad():
                        (cross_attention_logits_reference(*inputs, labels, n_way) if ref
                         else cross_attention_logits(*inputs, labels, n_way, chunk_size=chunk))
            return call

        for mode in ("eval", "train"):
            fns = {"fast": make(mode == "train", False), "reference": make(mode == "train", True)}
            t = timed_medians(fns, repeats, _sync(device))
            mem = {k: peak_tracked_bytes(f) for k, f in fns.items()}
            rows.append(dict(queries=queries, mode=mode, chunk=chunk, shape=f"{n_way}-way {shots}-shot, {side}x{side} maps, d = {dim}",
                             fast_ms=t["fast"] * 1e3, reference_ms=t["reference"] * 1e3,
                             speedup=t["reference"] / t["fast"], fast_peak_mib=mem["fast"] / 2**20,
                             reference_peak_mib=mem["reference"] / 2**20))
    return rows


def bench_ctx_episode(device, repeats: int, quick: bool) -> list[dict]:
    """Whole episodes with the default model (resnet34, output stride 16): a training step (forward, backward, Adam)
    and an evaluation forward of a 5-way 5-shot 15-query episode at 224 px, fast head against the reference head."""
    from relzoo import CrossTransformerConfig, CrossTransformerForFewShotClassification

    backbone, size, n_way, shots, queries = ("test_resnet", 32, 3, 2, 2) if quick else ("resnet34", 224, 5, 5, 15)
    torch.manual_seed(0)
    models = {impl: CrossTransformerForFewShotClassification(CrossTransformerConfig(
        backbone=backbone, implementation=impl, backbone_kwargs={"output_stride": 16})).to(device)
        for impl in ("fast", "reference")}
    models["reference"].load_state_dict(models["fast"].state_dict())
    support = torch.randn(n_way * shots, 3, size, size, device=device)
    labels = torch.arange(n_way, device=device).repeat_interleave(shots)
    query = torch.randn(n_way * queries, 3, size, size, device=device)
    qlabels = torch.arange(n_way, device=device).repeat_interleave(queries)
    optims = {k: torch.optim.Adam(m.parameters(), lr=1e-6) for k, m in models.items()}

    def train(k):
        def f():
            models[k].train()
            optims[k].zero_grad(set_to_none=True)
            models[k](query, support, labels, qlabels).loss.backward()
            optims[k].step()
        return f

    def infer(k):
        def f():
            models[k].eval()
            with torch.no_grad():
                models[k](query, support, labels)
        return f

    rows = []
    for mode, make in (("eval", infer), ("train", train)):
        fns = {k: make(k) for k in models}
        t = timed_medians(fns, repeats, _sync(device))
        mem = {k: peak_memory_bytes(f) for k, f in fns.items()}
        rows.append(dict(mode=mode, episode=f"{n_way}-way {shots}-shot {queries}-query, {size} px, {backbone}",
                         fast_episodes_per_s=1 / t["fast"], reference_episodes_per_s=1 / t["reference"],
                         speedup=t["reference"] / t["fast"], fast_peak_mib=mem["fast"] / 2**20,
                         reference_peak_mib=mem["reference"] / 2**20))
    return rows


def ctx_markdown(head: list[dict], episode: list[dict], meta: dict) -> str:
    lines = [f"CrossTransformers | {meta['device']} | torch {meta['torch']} | {meta['threads']} threads | medians of "
             f"{meta['repeats']} interleaved repeats", "",
             f"Head alone ({head[0]['shape']}; fast: fused attention per class, chunks of {head[0]['chunk']} queries "
             "recomputed in backward when there are more; peak memory from torch's MemTracker):", "",
             "| queries | mode | fast ms | reference ms | speed-up | fast peak MiB | reference peak MiB |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['queries']} | {r['mode']} | {r['fast_ms']:.1f} | {r['reference_ms']:.1f} | {r['speedup']:.2f}x | "
              f"{r['fast_peak_mib']:.1f} | {r['reference_peak_mib']:.1f} |" for r in head]
    lines += ["", f"Whole episodes ({episode[0]['episode']}):", "",
              "| mode | fast episodes/s | reference episodes/s | speed-up | fast peak MiB | reference peak MiB |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['fast_episodes_per_s']:.3f} | {r['reference_episodes_per_s']:.3f} | "
              f"{r['speedup']:.2f}x | {r['fast_peak_mib']:.0f} | {r['reference_peak_mib']:.0f} |" for r in episode]
    return "\n".join(lines)


def _ellipse_masks(batch: int, shots: int, size: int, area: float, device) -> torch.Tensor:
    """(B, K, S, S) masks: a centred ellipse covering ``area`` of the image (1.0: the whole image)."""
    if area >= 1:
        return torch.ones(batch, shots, size, size, device=device)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    radius = (4 * area / torch.pi) ** 0.5                # ellipse area pi r^2 / 4 of the [-1, 1]^2 square
    mask = ((yy / radius) ** 2 + (xx / (radius * 0.9)) ** 2 <= 1).float()
    return mask.expand(batch, shots, size, size).to(device)


def bench_hsnet_conv(device, repeats: int, quick: bool) -> list[dict]:
    """Centre-pivot 4D convolution against the dense 4D convolution with the same (centre-pivot) kernel, at the
    input shapes of HSNet-ResNet50's encoder for a 400x400 episode: parameters, multiply-adds, time, peak memory and
    the largest difference of their outputs."""
    from relzoo.layers.hsnet import CenterPivotConv4d, center_pivot_conv4d_reference

    layers = [("encoder_layer4.0", 3, 16, 3, 2, (13, 13, 13, 13)), ("encoder_layer3.0", 6, 16, 5, 4, (25, 25, 25, 25)),
              ("encoder_layer2.0", 4, 16, 5, 4, (50, 50, 50, 50)), ("encoder_layer2.3", 16, 64, 5, 4, (50, 50, 13, 13)),
              ("encoder_layer3to2.0", 128, 128, 3, 1, (50, 50, 2, 2))]
    if quick:
        layers = [("tiny", 2, 4, 3, 2, (5, 6, 7, 5))]
    rows = []
    for name, cin, cout, k, stride, dims in layers:
        torch.manual_seed(0)
        layer = CenterPivotConv4d(cin, cout, k, stride).to(device)
        x = torch.randn(1, cin, *dims, device=device)
        with torch.no_grad():
            fns = {"cp": lambda layer=layer, x=x: layer(x),
                   "dense": lambda layer=layer, x=x: center_pivot_conv4d_reference(x, layer)}
            t = timed_medians(fns, repeats, _sync(device))
            mem = {key: peak_memory_bytes(f) for key, f in fns.items()}
            out = layer(x)
            diff = (out - center_pivot_conv4d_reference(x, layer)).abs().max().item()
        outputs = out[0, 0].numel()
        rows.append(dict(layer=name, shape=f"{cin}x{'x'.join(map(str, dims))} -> {cout}x{'x'.join(map(str, out.shape[2:]))}",
                         kernel=k, stride=stride, cp_params=sum(p.numel() for p in layer.parameters()),
                         dense_params=cout * cin * k ** 4 + cout, cp_gmacs=2 * cin * cout * k * k * outputs / 1e9,
                         dense_gmacs=cin * cout * k ** 4 * outputs / 1e9, cp_ms=t["cp"] * 1e3,
                         dense_ms=t["dense"] * 1e3, speedup=t["dense"] / t["cp"], cp_peak_mib=mem["cp"] / 2**20,
                         dense_peak_mib=mem["dense"] / 2**20, max_abs_diff=diff))
    return rows


def bench_hsnet_model(device, repeats: int, quick: bool) -> list[dict]:
    """Whole HSNet-ResNet50 episodes at 400x400 (inference): the model against :func:`official_order_forward` (one
    1-shot forward per shot, query features recomputed each time, per-tap masking and correlation), 1 and 5 shots,
    support masks covering a quarter of the image and all of it (the fast path skips support positions outside the
    mask, so its gain depends on the mask)."""
    from relzoo import HSNetConfig, HSNetForFewShotSegmentation
    from relzoo.models.hsnet import official_order_forward

    backbone, size = ("resnet18", 64) if quick else ("resnet50", 400)
    torch.manual_seed(0)
    model = HSNetForFewShotSegmentation(HSNetConfig(backbone=backbone)).to(device).eval()
    rows = []
    for shots in (1, 5):
        for area in ((0.25, 1.0) if not quick else (0.25,)):
            g = torch.Generator().manual_seed(shots)
            query = torch.randn(1, 3, size, size, generator=g).to(device)
            support = torch.randn(1, shots, 3, size, size, generator=g).to(device)
            masks = _ellipse_masks(1, shots, size, area, device)
            with torch.no_grad():
                args = (query, support, masks)
                fns = {"fast": lambda args=args: model(*args),
                       "reference": lambda args=args: official_order_forward(model, *args)}
                t = timed_medians(fns, repeats, _sync(device))
                mem = {key: peak_memory_bytes(f) for key, f in fns.items()}
                out = model(query, support, masks)
                predicted, shot_logits = official_order_forward(model, query, support, masks)
            fast = out.shot_logits if shots > 1 else out.logits[:, None]
            rows.append(dict(shots=shots, mask_area=masks.mean().item(), episode=f"1 query, {size}x{size}, {backbone}",
                             fast_s=t["fast"], reference_s=t["reference"], speedup=t["reference"] / t["fast"],
                             fast_peak_mib=mem["fast"] / 2**20, reference_peak_mib=mem["reference"] / 2**20,
                             max_abs_logit_diff=(fast - shot_logits).abs().max().item(),
                             same_prediction=bool(torch.equal(out.predicted_mask, predicted))))
    return rows


def hsnet_markdown(conv: list[dict], model: list[dict], meta: dict) -> str:
    lines = [f"HSNet | {meta['device']} | torch {meta['torch']} | {meta['threads']} threads | medians of "
             f"{meta['repeats']} interleaved repeats", "",
             "Centre-pivot vs dense 4D convolution (the same centre-pivot kernel run densely, k^4 offsets), at the "
             "encoder's input shapes for a 400x400 ResNet-50 episode:", "",
             "| layer | input -> output | k / stride | params CP | params dense | GMACs CP | GMACs dense | CP ms | "
             "dense ms | speed-up | CP peak MiB | dense peak MiB | max abs diff |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['shape']} | {r['kernel']} / {r['stride']} | {r['cp_params']:,} | "
              f"{r['dense_params']:,} | {r['cp_gmacs']:.2f} | {r['dense_gmacs']:.2f} | {r['cp_ms']:.1f} | "
              f"{r['dense_ms']:.1f} | {r['speedup']:.1f}x | {r['cp_peak_mib']:.0f} | {r['dense_peak_mib']:.0f} | "
              f"{r['max_abs_diff']:.1e} |" for r in conv]
    lines += ["", f"Whole episodes ({model[0]['episode']}, inference): relzoo vs the official computation order "
              "(reference):", "",
              "| shots | mask area | relzoo s | reference s | speed-up | relzoo peak MiB | reference peak MiB | "
              "max abs logit diff | same prediction |", "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['shots']} | {100 * r['mask_area']:.0f} % | {r['fast_s']:.3f} | {r['reference_s']:.3f} | "
              f"{r['speedup']:.2f}x | {r['fast_peak_mib']:.0f} | {r['reference_peak_mib']:.0f} | "
              f"{r['max_abs_logit_diff']:.1e} | {'yes' if r['same_prediction'] else 'no'} |" for r in model]
    return "\n".join(lines)


PLUGIN_MODELS = {"resnet18": "layer3", "deit_tiny_patch16_224": "blocks.8"}   # V2 insertion: trainer default, DeiT's


def bench_plugins(device, repeats: int, quick: bool) -> list[dict]:
    """One SGD training step (forward, loss, backward, update) and one inference forward of each model plainly and
    with each plug-in, batch 64 at 224 px (quick: batch 8 at 32 px): time and peak memory as ratios to the plain
    network measured in the same interleaved rounds; inference outputs compared bit for bit."""
    import copy

    import timm
    import torch.nn.functional as F

    from relzoo import add_apinet, add_batchformer, apinet_training_loss, batchformer_targets

    batch, size, classes = (8, 32, 4) if quick else (64, 224, 16)
    labels = (torch.arange(batch) // 4 % classes).to(device)          # API-Net's balanced batch: classes x 4
    rows = []
    for name, after in PLUGIN_MODELS.items():
        torch.manual_seed(0)
        kwargs = dict(img_size=size) if "deit" in name else {}
        plain = timm.create_model(name, num_classes=classes, **kwargs).to(device)
        variants = {"plain": plain,
                    "BatchFormer V1": add_batchformer(copy.deepcopy(plain), version=1),
                    f"BatchFormerV2 after {after}": add_batchformer(copy.deepcopy(plain), version=2, after=[after]),
                    "API-Net": add_apinet(copy.deepcopy(plain))}
        optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in variants.items()}
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)

        def train_step(key, variants=variants, optimizers=optimizers, x=x):
            model, opt = variants[key], optimizers[key]
            model.train()
            if key == "API-Net":
                loss = apinet_training_loss(model, x, labels).loss
            else:
                loss = F.cross_entropy(model(x), batchformer_targets(model, labels))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def infer(key, variants=variants, x=x):
            model = variants[key].eval()
            with torch.no_grad():
                return model(x)

        train_fns = {k: (lambda k=k: train_step(k)) for k in variants}
        infer_fns = {k: (lambda k=k: infer(k)) for k in variants}
        train_t = timed_medians(train_fns, repeats, _sync(device))
        infer_t = timed_medians(infer_fns, repeats, _sync(device))
        train_mem = {k: peak_memory_bytes(f) for k, f in train_fns.items()}
        infer_mem = {k: peak_memory_bytes(f) for k, f in infer_fns.items()}
        # the same weights for the bit-for-bit check (training moved each copy differently)
        state = {k: v for k, v in plain.state_dict().items()}
        reference = infer("plain")
        reference_calls = aten_calls(lambda: infer("plain"))
        for key, model in variants.items():
            model.load_state_dict(state, strict=False)
            extra = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in ("batchformer", "apinet"))
            rows.append(dict(model=name, plugin=key, batch=batch, size=size, plugin_params=extra,
                             train_ms=train_t[key] * 1e3, train_ratio=train_t[key] / train_t["plain"],
                             train_peak_mib=train_mem[key] / 2**20, train_mem_ratio=train_mem[key] / train_mem["plain"],
                             infer_ms=infer_t[key] * 1e3, infer_ratio=infer_t[key] / infer_t["plain"],
                             infer_peak_mib=infer_mem[key] / 2**20,
                             identical_inference=bool(torch.equal(infer(key), reference)),
                             same_inference_ops=aten_calls(lambda key=key: infer(key)) == reference_calls,
                             inference_ops=len(reference_calls)))
    return rows


def aten_calls(fn) -> list[str]:
    """The ATen operators ``fn()`` runs, in order (a dispatch mode that records every call)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record() as record:
        fn()
    return record.calls


def plugins_markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Plug-ins | {meta['device']} | torch {meta['torch']} | {meta['threads']} threads | batch "
             f"{rows[0]['batch']} at {rows[0]['size']} px | medians of {meta['repeats']} interleaved repeats", "",
             "| model | plug-in | extra params (training only) | train step ms | train vs plain | train peak MiB | "
             "train memory vs plain | inference ms | inference vs plain | inference: same ATen ops, same outputs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['model']} | {r['plugin']} | {r['plugin_params']:,} | {r['train_ms']:.0f} | "
              f"{100 * (r['train_ratio'] - 1):+.1f} % | {r['train_peak_mib']:.0f} | "
              f"{100 * (r['train_mem_ratio'] - 1):+.1f} % | {r['infer_ms']:.0f} | "
              f"{100 * (r['infer_ratio'] - 1):+.1f} % | {'yes' if r['same_inference_ops'] else 'NO'} "
              f"({r['inference_ops']} calls), {'yes' if r['identical_inference'] else 'NO'} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="relzoo benchmarks (ratios against references in the same run)")
    parser.add_argument("family", choices=["san", "ctx", "hsnet", "plugins"], help="which family to benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks the script, not the speed")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 7, quick 1)")
    parser.add_argument("--train_repeats", type=int, default=None, help="training-step repeats (default 3, quick 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    parser.add_argument("--compile", action="store_true", help="only the torch.compile cold-start table")
    parser.add_argument("--_probe", default=None, help=argparse.SUPPRESS)  # one compile measurement (internal)
    args = parser.parse_args(argv)
    if args._probe:
        print(json.dumps(compile_probe(json.loads(args._probe))))
        return {}
    repeats = args.repeats or (1 if args.quick else 7)
    train_repeats = args.train_repeats or (1 if args.quick else 3)
    device = torch.device(args.device)
    batch, size = (1, 128) if args.quick else (8, 224)
    meta = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else
                f"CPU ({platform.processor() or platform.machine()})", torch=torch.__version__,
                threads=torch.get_num_threads(), repeats=repeats, train_repeats=train_repeats, batch=batch, size=size)
    if args.compile:
        rows = bench_compile(device, args.quick, 2 if not args.quick else 1, size, 3 if not args.quick else 1)
        print(compile_markdown(rows, dict(meta, batch=2 if not args.quick else 1)))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(meta=meta, compile=rows), f, indent=2)
        return dict(meta=meta, compile=rows)
    if args.family == "plugins":
        meta["repeats"] = min(repeats, 5)
        result = dict(meta=meta, plugins=bench_plugins(device, meta["repeats"], args.quick))
        print(plugins_markdown(result["plugins"], meta))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return result
    if args.family == "hsnet":
        result = dict(meta=meta, conv=bench_hsnet_conv(device, min(repeats, 3), args.quick),
                      model=bench_hsnet_model(device, min(repeats, 3), args.quick))
        meta["repeats"] = min(repeats, 3)
        print(hsnet_markdown(result["conv"], result["model"], meta))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return result
    if args.family == "ctx":
        torch.manual_seed(0)
        result = dict(meta=meta, head=bench_ctx_head(device, repeats, args.quick),
                      episode=bench_ctx_episode(device, min(repeats, 3), args.quick))
        print(ctx_markdown(result["head"], result["episode"], meta))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return result
    torch.manual_seed(0)
    agg = bench_aggregation(device, repeats, args.quick)
    attention = bench_attention(device, repeats, args.quick)
    models = bench_models(device, repeats, train_repeats, args.quick, batch, size)
    print(markdown(agg, attention, models, meta))
    result = dict(meta=meta, aggregation=agg, attention=attention, models=models)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
