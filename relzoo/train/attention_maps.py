"""CrossTransformers correspondence pictures: where a query position attends in each support image.

One PNG per query: each row is one query position (marked with a red box on the query, left); the other columns are
the support images of the episode, one per class, with the attention weights of that position over the image drawn
as a heat map (brighter: more weight; each class's weights sum to 1, as in the model).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def _to_rgb(pixels: torch.Tensor) -> np.ndarray:
    """A [-1, 1] image ``(3, H, W)`` as uint8 ``(H, W, 3)``."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def _overlay(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Image darkened where the (upsampled) weights are low, tinted warm where they are high."""
    w = weights / max(float(weights.max()), 1e-12)
    heat = np.stack([np.ones_like(w), w ** 0.7, np.zeros_like(w)], -1) * 255
    alpha = 0.25 + 0.75 * w[..., None]
    return (alpha * (0.5 * image + 0.5 * heat)).clip(0, 255).astype(np.uint8)


@torch.no_grad()
def attention_picture(model, support_pixel_values: torch.Tensor, support_labels: torch.Tensor,
                      query_pixel_values: torch.Tensor, positions: list[int] | None = None, scale: int = 3) -> Image.Image:
    """One picture for one query ``(1, 3, H, W)`` against a support set (one image per class shown: the first)."""
    model.eval()
    out = model(query_pixel_values=query_pixel_values, support_pixel_values=support_pixel_values,
                support_labels=support_labels, output_attentions=True)
    (qh, qw), (sh, sw) = out.query_feature_size, out.support_feature_size
    att = out.attentions[0]                                   # (P, S, M)
    size = query_pixel_values.shape[-1] * scale
    if positions is None:
        positions = sorted({(qh // 2) * qw + qw // 2, 0, qh * qw - 1, (qh // 4) * qw + (3 * qw) // 4})
    shown = [int((support_labels == c).nonzero()[0]) for c in range(int(support_labels.max()) + 1)]
    query = np.asarray(Image.fromarray(_to_rgb(query_pixel_values[0])).resize((size, size), Image.NEAREST))
    canvas = Image.new("RGB", ((len(shown) + 1) * (size + 4), len(positions) * (size + 4)), "white")
    for row, p in enumerate(positions):
        q_img = Image.fromarray(query.copy())
        y, x = divmod(p, qw)
        cell_h, cell_w = size / qh, size / qw
        ImageDraw.Draw(q_img).rectangle([x * cell_w, y * cell_h, (x + 1) * cell_w - 1, (y + 1) * cell_h - 1],
                                        outline=(255, 0, 0), width=2)
        canvas.paste(q_img, (0, row * (size + 4)))
        for col, j in enumerate(shown, start=1):
            s_img = np.asarray(Image.fromarray(_to_rgb(support_pixel_values[j])).resize((size, size), Image.NEAREST))
            weights = att[p, j].view(sh, sw).float().cpu().numpy()
            up = np.asarray(Image.fromarray(weights.astype(np.float32), mode="F").resize((size, size), Image.NEAREST))
            canvas.paste(Image.fromarray(_overlay(s_img.astype(np.float32), up)), (col * (size + 4), row * (size + 4)))
    return canvas


def write_attention_maps(model, args, folder: Path) -> list[Path]:
    """``args.attention_maps`` pictures (queries of the first test set, a 1-shot episode of its classes)."""
    from ..data.builtin import load_split
    from ..data.episodes import EpisodeCollator, EpisodeSampler
    from ..data.transforms import read_image

    name, split, classes = args.parsed_eval_sets()[0]
    ds = load_split(name, split)
    sampler = EpisodeSampler(ds, n_way=args.eval_way, n_shot=1, n_query=1, num_episodes=args.attention_maps,
                             seed=args.seed + 2, classes=classes)
    collate = EpisodeCollator(args.image_size)
    folder.mkdir(parents=True, exist_ok=True)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    paths = []
    for i in range(args.attention_maps):
        ep = collate([(read_image(ds, it.index, "RGB")[0], it) for it in sampler.episode(i)])
        picture = attention_picture(model, ep["support_pixel_values"].to(device, dtype), ep["support_labels"].to(device),
                                    ep["query_pixel_values"][:1].to(device, dtype))
        path = folder / f"query_{i:03d}.png"
        picture.save(path)
        paths.append(path)
    return paths
