"""How a trained CrossTransformer uses its support set: on test episodes of one test set, per shot count,

* the CTX head's accuracy and, on the very same feature maps, a ProtoNet readout (class means of the pooled
  features, squared Euclidean distance): the gap separates what the backbone learned from what the head does;
* how concentrated the attention is, for each query position over the support positions of the query's own class:
  the mean largest weight, the mean normalised entropy (1 = uniform) and the share of the class's attention taken by
  its most-attended shot (1 = a single shot is used; 1/K = all K shots equally).

    python scripts/fewshot_attention.py outputs/demo/model [--eval_set fashion_mnist:test:1,3,5,7,9]
        [--shots 1,5] [--episodes 200] [--way 5] [--queries 15] [--image_size 56] [--json OUT.json]

Runs in evaluation mode with BatchNorm's running statistics (the model's ``test_bn_stats="running"``), each image
embedded once; episodes are drawn as the trainer's evaluation draws them (seed + 1).
"""
import argparse
import math

import torch


def attention_statistics(attention: torch.Tensor, support_labels: torch.Tensor, query_labels: torch.Tensor) -> dict:
    """``attention (Q, P, S, Ps)`` of one episode -> sums over queries and positions of the largest weight, the
    normalised entropy and the top shot's share, within each query's own class, and the count they are over."""
    largest = entropy = top_shot = 0.0
    count = 0
    for q in range(attention.shape[0]):
        own = attention[q][:, support_labels == query_labels[q]]          # (P, shots, Ps): sums to 1 per position
        flat = own.flatten(1)
        p = flat.clamp_min(1e-30)
        largest += flat.max(1).values.sum().item()
        if flat.shape[1] > 1:
            entropy += (-(p * p.log()).sum(1) / math.log(flat.shape[1])).sum().item()
        top_shot += own.sum(2).max(1).values.sum().item()
        count += flat.shape[0]
    return {"largest": largest, "entropy": entropy, "top_shot": top_shot, "count": count}


@torch.no_grad()
def report(model, features: torch.Tensor, labels: list[int], shots: list[int], episodes: int, seed: int,
           n_way: int = 5, n_query: int = 15) -> list[dict]:
    """One row per shot count (see the module docstring) from pre-computed ``features (N, C, h, w)``."""
    from relzoo.data.episodes import EpisodeSampler
    from relzoo.metrics import mean_confidence_interval

    rows = []
    for k in shots:
        sampler = EpisodeSampler(labels, n_way=n_way, n_shot=k, n_query=n_query, num_episodes=episodes, seed=seed)
        head, proto = [], []
        total = {"largest": 0.0, "entropy": 0.0, "top_shot": 0.0, "count": 0}
        for i in range(episodes):
            items = sampler.episode(i)
            support = [it for it in items if not it.query]
            query = [it for it in items if it.query]
            s_feat, q_feat = features[[it.index for it in support]], features[[it.index for it in query]]
            s_lab = torch.tensor([it.label for it in support])
            q_lab = torch.tensor([it.label for it in query])
            logits, attention = model.logits_from_features(q_feat, s_feat, s_lab, output_attentions=True)
            head.append((logits.argmax(-1) == q_lab).float().mean().item())
            pooled_s, pooled_q = s_feat.mean((2, 3)), q_feat.mean((2, 3))
            means = torch.stack([pooled_s[s_lab == c].mean(0) for c in range(n_way)])
            proto.append((torch.cdist(pooled_q, means).argmin(-1) == q_lab).float().mean().item())
            for key, value in attention_statistics(attention, s_lab, q_lab).items():
                total[key] += value
        (acc, ci), (p_acc, p_ci) = mean_confidence_interval(head), mean_confidence_interval(proto)
        n = max(total["count"], 1)
        rows.append({"shot": k, "episodes": episodes, "ctx_accuracy": acc, "ctx_ci95": ci,
                     "protonet_readout_accuracy": p_acc, "protonet_readout_ci95": p_ci,
                     "largest_weight": total["largest"] / n, "normalised_entropy": total["entropy"] / n,
                     "top_shot_share": total["top_shot"] / n})
    return rows


def main(argv=None) -> list[dict]:
    from accelerate import Accelerator

    from relzoo import AutoModelForFewShotClassification
    from relzoo.train.fewshot import FewShotTrainingArguments, _pool, embed_pool, load_split

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a CrossTransformer folder (save_pretrained / the trainer's OUTPUT/model)")
    parser.add_argument("--eval_set", default="fashion_mnist:test:1,3,5,7,9", help="DATASET:SPLIT:CLASSES")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15, help="per class")
    parser.add_argument("--image_size", type=int, default=56)
    parser.add_argument("--pool_per_class", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    model = AutoModelForFewShotClassification.from_pretrained(args.model).eval()
    if not hasattr(model, "head"):
        parser.error(f"`model` {args.model!r} is a {type(model).__name__}: this report needs a CrossTransformer")
    try:
        shots = [int(s) for s in args.shots.split(",")]
        (name, split, classes), = FewShotTrainingArguments(eval_sets=args.eval_set).parsed_eval_sets()
    except ValueError as err:
        parser.error(str(err))
    ds = load_split(name, split)
    rows_idx, _ = _pool(ds, classes, args.pool_per_class, args.seed)
    features, _ = embed_pool(model, ds, rows_idx, args.image_size, Accelerator(cpu=not torch.cuda.is_available()))
    labels = [int(x) for x in ds.select(rows_idx.tolist())["label"]]
    rows = report(model, features.cpu(), labels, shots, args.episodes, args.seed + 1, args.way, args.queries)
    print(f"{args.model} on {args.eval_set}, {args.episodes} episodes, {args.way}-way, {args.queries} queries per "
          "class")
    print("| shots | CTX head | ProtoNet readout, same features | largest weight | normalised entropy | top shot's share |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shot']} | {100 * r['ctx_accuracy']:.2f} ± {100 * r['ctx_ci95']:.2f} | "
              f"{100 * r['protonet_readout_accuracy']:.2f} ± {100 * r['protonet_readout_ci95']:.2f} | "
              f"{r['largest_weight']:.3f} | {r['normalised_entropy']:.3f} | {r['top_shot_share']:.3f} |")
    if args.json:
        from relzoo.fileio import write_json_atomic

        write_json_atomic(args.json, {"model": args.model, "eval_set": args.eval_set, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
