"""HSNet benchmarks: centre-pivot vs dense 4D convolution, and HSNet-ResNet50 episodes against the official
computation order.

    python scripts/benchmark.py hsnet [--quick]
"""
from __future__ import annotations

import torch

from .common import peak_memory_bytes, sync_for, timed_medians

NAME = "hsnet"
DESCRIPTION = "centre-pivot vs dense 4D conv; HSNet-ResNet50 episodes vs the official order (about 5 minutes)"


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
            t = timed_medians(fns, repeats, sync_for(device))
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
                t = timed_medians(fns, repeats, sync_for(device))
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


def run(args, device: torch.device, meta: dict) -> tuple[dict, str]:
    meta["repeats"] = min(meta["repeats"], 3)
    result = dict(meta=meta, conv=bench_hsnet_conv(device, meta["repeats"], args.quick),
                  model=bench_hsnet_model(device, meta["repeats"], args.quick))
    return result, hsnet_markdown(result["conv"], result["model"], meta)
