"""CrossTransformers benchmarks: the attention head (fast vs reference) and whole training episodes.

    python scripts/benchmark.py ctx [--quick]
"""
from __future__ import annotations

import torch

from .common import peak_memory_bytes, peak_tracked_bytes, sync_for, timed_medians

NAME = "ctx"
DESCRIPTION = "CrossTransformers head and whole episodes, fast vs reference"


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
            t = timed_medians(fns, repeats, sync_for(device))
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
        t = timed_medians(fns, repeats, sync_for(device))
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


def run(args, device: torch.device, meta: dict) -> tuple[dict, str]:
    torch.manual_seed(0)
    result = dict(meta=meta, head=bench_ctx_head(device, meta["repeats"], args.quick),
                  episode=bench_ctx_episode(device, min(meta["repeats"], 3), args.quick))
    return result, ctx_markdown(result["head"], result["episode"], meta)
