"""Plug-in benchmarks: training step and inference with / without BatchFormer V1, V2 and API-Net (resnet18 and
deit_tiny, batch 64).

    python scripts/benchmark.py plugins [--quick]
"""
from __future__ import annotations

import torch

from .common import peak_memory_bytes, sync_for, timed_medians

NAME = "plugins"
DESCRIPTION = "training step and inference with / without BatchFormer V1, V2 and API-Net (about 10 minutes)"


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
        train_t = timed_medians(train_fns, repeats, sync_for(device))
        infer_t = timed_medians(infer_fns, repeats, sync_for(device))
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


def run(args, device: torch.device, meta: dict) -> tuple[dict, str]:
    meta["repeats"] = min(meta["repeats"], 5)
    result = dict(meta=meta, plugins=bench_plugins(device, meta["repeats"], args.quick))
    return result, plugins_markdown(result["plugins"], meta)
