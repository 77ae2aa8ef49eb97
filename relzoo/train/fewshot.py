"""Episodic few-shot training and evaluation with Accelerate: CrossTransformers or ProtoNet on any timm backbone,
regular and SimCLR episodes, on one CPU or many processes (each process trains on its own episodes; gradients are
averaged).

Recipes:

* ``official`` (CrossTransformers' released configuration): Adam (lr 6e-4), gradients divided by their global L2
  norm (floored at sqrt(1e-5)) before the Adam step, L2 weight decay 8.86e-5 added to the loss on convolution and
  linear weights (not norms), learning rate x0.915193802145601 every 2,000 steps (staircase).
* ``plain``: AdamW (lr 1e-3, decoupled weight decay 8.86e-5 by default), cosine schedule over the run.

Evaluation: ``eval_episodes`` test episodes per (dataset, shots) setting, classes never seen in training, mean
accuracy ± 95% confidence interval. In eval mode the backbone's output of an image does not depend on the episode,
so every image of the evaluation pool is embedded once and episodes reuse the maps.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..data.builtin import load_split
from ..metrics import mean_confidence_interval
from .arguments import RunArguments
from .engine import (
    BadArgumentError,
    argument_check,
    check_image_size,
    replicas_in_sync,
    report_skipped,
    run_identity,
)
from .run import TrainingPlan, run_training

MODELS = ("crosstransformer", "protonet")
RECIPES = ("official", "plain")
OFFICIAL_DECAY = 0.915193802145601
#: arguments that do not change the trained weights (used after training, or memory only): a resumed run may change them
NO_EFFECT_ON_WEIGHTS = ("eval_sets", "eval_shots", "eval_way", "eval_queries", "eval_episodes", "eval_pool_per_class",
                        "test_bn_stats", "attention_maps")
#: built-in benchmark: meta-train on the even Fashion-MNIST classes, meta-test on the odd ones and on digits
DEFAULT_EVAL = "fashion_mnist:test:1,3,5,7,9;digits:all:all"


@dataclass
class FewShotTrainingArguments(RunArguments):
    """Arguments of :func:`train_fewshot` (and of ``scripts/train_fewshot.py``)."""

    model: str = field(default="crosstransformer", metadata={"help": "crosstransformer or protonet"})
    backbone: str = field(default="resnet18", metadata={"help": "timm model name (official CTX: resnet34)"})
    backbone_kwargs: str | None = field(default='{"output_stride": 16}', metadata={
        "help": "JSON dict of extra timm.create_model arguments (official: output_stride 16, 14x14 maps at 224 px)"})
    dataset: str = field(default="fashion_mnist", metadata={
        "help": "training data: fashion_mnist, digits, an imagefolder root or a save_to_disk folder"})
    train_split: str = field(default="train", metadata={"help": "training split"})
    train_classes: str | None = field(default="0,2,4,6,8", metadata={
        "help": "comma-separated class ids episodes are drawn from in training (a class split); 'all' or None: all"})
    eval_sets: str = field(default=DEFAULT_EVAL, metadata={
        "help": "';'-separated dataset:split:classes test sets (classes: comma-separated ids or 'all'; split 'all' "
                "joins train and test); test classes must not be training classes of the same dataset"})
    image_size: int = field(default=56, metadata={"help": "square input side (official: 224)"})
    n_way: int = field(default=5, metadata={"help": "training episodes: classes"})
    n_shot: int = field(default=5, metadata={"help": "training episodes: support images per class"})
    n_query: int = field(default=10, metadata={"help": "training episodes: query images per class"})
    variable_episodes: bool = field(default=False, metadata={
        "help": "Meta-Dataset variable-way/variable-shot training episodes instead of fixed ones"})
    simclr_probability: float = field(default=0.5, metadata={
        "help": "fraction of training episodes made SimCLR episodes (official CTX+SimCLR: 0.5; CTX: 0)"})
    recipe: str = field(default="official", metadata={"help": "official (Adam 6e-4, normalised gradients, staircase "
                                                              "decay, L2 8.86e-5) or plain (AdamW, cosine)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default: official 6e-4, plain 1e-3)"})
    weight_decay: float = field(default=8.86e-5, metadata={"help": "official: L2 in the loss; plain: AdamW decay"})
    decay_every: int = field(default=2000, metadata={"help": "official staircase: steps between x0.9152 decays"})
    max_steps: int = field(default=300, metadata={"help": "training episodes (optimizer steps) per process"})
    eval_shots: str = field(default="1,5", metadata={"help": "comma-separated shots of the test episodes"})
    eval_way: int = field(default=5, metadata={"help": "classes per test episode"})
    eval_queries: int = field(default=15, metadata={"help": "queries per class in test episodes"})
    eval_episodes: int = field(default=600, metadata={"help": "test episodes per setting"})
    eval_pool_per_class: int | None = field(default=300, metadata={
        "help": "test images per class the episodes draw from (a seeded subset; None: all)"})
    query_bn_stats: str = field(default="support", metadata={
        "help": "training: queries normalised with the support set's BatchNorm moments (support, official) or "
                "their own (batch)"})
    test_bn_stats: str | None = field(default=None, metadata={
        "help": "evaluation: BatchNorm with its running statistics (running) or with each episode's support moments "
                "(support); default: the official choice of the model (CTX running, ProtoNet support)"})
    backbone_init: str = field(default="official", metadata={
        "help": "official (truncated normal std 0.1 for every convolution, BatchNorm 1/0) or timm (timm's own)"})
    head_init: str = field(default="small", metadata={
        "help": "CrossTransformers' key/value projections: small (O(1) attention logits and distances at the start) "
                "or official (truncated normal std 0.1: one-hot attention at the start)"})
    attention_maps: int = field(default=0, metadata={
        "help": "write PNG attention pictures for this many test queries (CrossTransformers only)"})
    output_dir: str = field(default="outputs/fewshot", metadata={"help": "where everything goes"})
    skip_unreadable_images: bool = field(default=False, metadata={
        "help": "images that cannot be decoded (truncated, damaged) do not stop the run: in training episodes another "
                "image of the same class stands in, test pools leave them out; they are counted and listed at the end"})

    CHOICES: ClassVar[dict[str, tuple]] = {
        **RunArguments.CHOICES, "model": MODELS, "recipe": RECIPES, "query_bn_stats": ("support", "batch"),
        "test_bn_stats": (None, "running", "support"), "backbone_init": ("official", "timm"),
        "head_init": ("small", "official")}
    INTEGER_BOUNDS: ClassVar[dict[str, int]] = {
        **RunArguments.INTEGER_BOUNDS, "image_size": 8, "n_way": 2, "n_shot": 1, "n_query": 1, "max_steps": 1,
        "eval_way": 2, "eval_queries": 1, "eval_episodes": 1, "decay_every": 1, "attention_maps": 0,
        "eval_pool_per_class": 1}
    OPTIONAL_INTEGERS: ClassVar[dict[str, str]] = {**RunArguments.OPTIONAL_INTEGERS, "eval_pool_per_class": ""}

    def validate_task(self) -> None:
        check_image_size(self.image_size, self.n_way * (self.n_shot + self.n_query))
        if not (isinstance(self.simclr_probability, (int, float)) and 0 <= self.simclr_probability <= 1):
            raise ValueError(f"`simclr_probability` must be in [0, 1], got {self.simclr_probability!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"`lr` must be a positive number (or None: the recipe's), got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay!r}")
        if self.attention_maps and self.model != "crosstransformer":
            raise ValueError("`attention_maps` needs `model` crosstransformer (ProtoNet has no attention)")
        self.parsed_backbone_kwargs()
        self.parsed_shots()
        self.parsed_eval_sets()
        self.parsed_train_classes()

    def parsed_backbone_kwargs(self) -> dict:
        if self.backbone_kwargs is None:
            return {}
        try:
            kwargs = json.loads(self.backbone_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"`backbone_kwargs` must be a JSON object, got {self.backbone_kwargs!r} ({err})") from err
        if not isinstance(kwargs, dict):
            raise ValueError(f"`backbone_kwargs` must be a JSON object, got {self.backbone_kwargs!r}")
        return kwargs

    def parsed_shots(self) -> list[int]:
        try:
            shots = [int(s) for s in self.eval_shots.split(",")]
        except (ValueError, AttributeError):
            shots = []
        if not shots or min(shots) < 1:
            raise ValueError(f"`eval_shots` must be comma-separated positive ints (e.g. '1,5'), got {self.eval_shots!r}")
        return shots

    def parsed_train_classes(self) -> list[int] | None:
        return _parse_classes("train_classes", self.train_classes)

    def parsed_eval_sets(self) -> list[tuple[str, str, list[int] | None]]:
        sets = []
        for spec in str(self.eval_sets).split(";"):
            parts = spec.strip().split(":")
            if len(parts) != 3 or not parts[0] or not parts[1]:
                raise ValueError(f"`eval_sets` entries must be dataset:split:classes (e.g. 'digits:all:all' or "
                                 f"'fashion_mnist:test:1,3,5'), got {spec!r} in {self.eval_sets!r}")
            classes = _parse_classes("eval_sets", parts[2])
            train = self.parsed_train_classes()
            if parts[0] == self.dataset and classes is not None and train is not None and set(classes) & set(train):
                raise ValueError(f"`eval_sets` entry {spec!r} tests classes {sorted(set(classes) & set(train))} that "
                                 f"are training classes (`train_classes` {self.train_classes!r}): test classes must be "
                                 "unseen")
            if parts[0] == self.dataset and (classes is None or train is None):
                raise ValueError(f"`eval_sets` entry {spec!r} uses the training dataset with all classes: give the "
                                 "held-out class ids (and `train_classes`)")
            sets.append((parts[0], parts[1], classes))
        return sets


def _parse_classes(name: str, text: str | None) -> list[int] | None:
    if text is None or str(text).strip().lower() == "all":
        return None
    try:
        classes = [int(c) for c in str(text).split(",")]
    except ValueError:
        classes = None
    if not classes or min(classes) < 0 or len(set(classes)) != len(classes):
        raise ValueError(f"`{name}` classes must be distinct comma-separated class ids or 'all', got {text!r}")
    return classes


# ----------------------------------------------------------------------------------------------------------------
# recipe pieces
# ----------------------------------------------------------------------------------------------------------------
def normalize_gradients(model: torch.nn.Module, floor: float = math.sqrt(1e-5)) -> float:
    """Divide every gradient by the global L2 norm of all gradients (at least ``floor``), in place; returns the norm.
    The official CrossTransformers recipe does this before each Adam step ("normalized gradient descent")."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    scale = 1.0 / torch.clamp(norm, min=floor)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return float(norm)


def decayed_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Weights that get L2 decay in the official recipe: convolution and linear weights (norm layers and biases
    do not)."""
    return [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
            and m.weight.requires_grad]


def staircase(decay_every: int, rate: float = OFFICIAL_DECAY):
    return lambda step: rate ** (step // decay_every)


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def _pool(ds, classes, per_class: int | None, seed: int):
    """Row indices of up to ``per_class`` images (seeded choice) of each class in ``classes`` (None: all)."""
    import numpy as np

    labels = np.asarray(ds["label"])
    chosen = sorted(set(labels.tolist())) if classes is None else classes
    rng = np.random.default_rng(seed)
    rows = []
    for c in chosen:
        idx = np.flatnonzero(labels == c)
        if per_class is not None and len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        rows.append(idx)
    return np.concatenate(rows), chosen


def read_pool(ds, rows, image_size: int, skipped: set | None = None) -> tuple[torch.Tensor, list[bool]]:
    """The given rows with the plain episode transform: pixels ``(len(rows), 3, image_size, image_size)`` and whether
    each was readable. An unreadable image raises :class:`~relzoo.data.UnreadableImageError`, unless ``skipped`` is
    a set: then its source is added there and its row is a blank image marked unreadable."""
    from ..data.episodes import plain_episode_transform
    from ..data.transforms import UnreadableImageError, read_image

    transform = plain_episode_transform(image_size)
    pixels, readable = [], []
    for r in rows:
        try:
            pixels.append(transform(read_image(ds, r, "RGB")[0]))
            readable.append(True)
        except UnreadableImageError as err:
            if skipped is None:
                raise
            skipped.add(err.source)
            pixels.append(torch.zeros(3, image_size, image_size))
            readable.append(False)
    return (torch.stack(pixels) if pixels else torch.zeros(0, 3, image_size, image_size)), readable


@torch.no_grad()
def embed_pool(model, ds, rows, image_size: int, accelerator, batch_size: int = 128,
               skipped: set | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature maps ``(len(rows), C, h, w)`` of the given rows with the plain episode transform, computed in eval mode,
    shared out over processes and gathered, and which rows were readable ``(len(rows),)`` bool (see
    :func:`read_pool` for ``skipped``)."""
    net = accelerator.unwrap_model(model)
    net.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    per = math.ceil(len(rows) / world)
    mine = list(rows[rank * per:(rank + 1) * per])
    mine += [rows[0]] * (per - len(mine))  # equal lengths on every process for the gather
    feats, readable = [], []
    for start in range(0, per, batch_size):
        pixels, ok = read_pool(ds, mine[start:start + batch_size], image_size, skipped)
        readable += ok
        with accelerator.autocast():
            feats.append(net.embed(pixels.to(accelerator.device, net.dtype)).float())
    local, ok = torch.cat(feats), torch.tensor(readable, device=accelerator.device)
    if world > 1:
        local, ok = accelerator.gather(local), accelerator.gather(ok)
    return local[: len(rows)], ok[: len(rows)].cpu()


@torch.no_grad()
def evaluate_episodes(model, inputs: torch.Tensor, labels, n_way: int, n_shot: int, n_query: int, episodes: int,
                      seed: int, accelerator, from_pixels: bool = False) -> dict:
    """Accuracy over ``episodes`` test episodes drawn from ``inputs`` (``labels`` per row): pre-computed features
    (:func:`embed_pool`), or with ``from_pixels`` images (:func:`read_pool`) that every episode runs through the
    whole model (needed when features depend on the episode, e.g. ``test_bn_stats="support"``). Mean and 95%
    confidence interval, gathered over processes."""
    from accelerate.utils import gather_object

    from ..data.episodes import EpisodeSampler

    net = accelerator.unwrap_model(model)
    net.eval()
    sampler = EpisodeSampler(labels, n_way=n_way, n_shot=n_shot, n_query=n_query, num_episodes=episodes, seed=seed)
    accs = []
    for i in range(accelerator.process_index, episodes, accelerator.num_processes):
        items = sampler.episode(i)
        support = [it for it in items if not it.query]
        query = [it for it in items if it.query]
        s_in = inputs[[it.index for it in support]].to(accelerator.device, net.dtype)
        q_in = inputs[[it.index for it in query]].to(accelerator.device, net.dtype)
        s_lab = torch.tensor([it.label for it in support], device=accelerator.device)
        q_lab = torch.tensor([it.label for it in query], device=accelerator.device)
        if from_pixels:
            with accelerator.autocast():
                logits = net(query_pixel_values=q_in, support_pixel_values=s_in, support_labels=s_lab).logits
        else:
            logits, _ = net.logits_from_features(q_in, s_in, s_lab)
        accs.append((i, (logits.argmax(-1) == q_lab).float().mean().item()))
    accs = sorted(gather_object(accs)) if accelerator.num_processes > 1 else accs
    mean, ci = mean_confidence_interval([a for _, a in accs])
    return {"accuracy": mean, "ci95": ci, "episodes": len(accs)}


# ----------------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------------
def build_model(args: FewShotTrainingArguments):
    from ..models.crosstransformer import (
        CrossTransformerConfig,
        CrossTransformerForFewShotClassification,
        ProtoNetConfig,
        ProtoNetForFewShotClassification,
    )

    common = dict(backbone=args.backbone, backbone_kwargs=args.parsed_backbone_kwargs(),
                  query_bn_stats=args.query_bn_stats, backbone_init=args.backbone_init)
    if args.test_bn_stats is not None:
        common["test_bn_stats"] = args.test_bn_stats
    if args.model == "crosstransformer":
        return CrossTransformerForFewShotClassification(CrossTransformerConfig(**common, head_init=args.head_init))
    return ProtoNetForFewShotClassification(ProtoNetConfig(**common))


def train_fewshot(args: FewShotTrainingArguments) -> dict:
    """Train, evaluate (mean ± 95% CI per test set and shot count) and save; returns a summary dict (also written to
    ``output_dir/results.json``)."""
    return run_training(args, _build_fewshot)


def _build_fewshot(args: FewShotTrainingArguments, accelerator) -> TrainingPlan:
    from ..data.episodes import EpisodeCollator, EpisodeSampler, episode_loader

    with argument_check(args, "dataset", "train_split"):
        train_ds = load_split(args.dataset, args.train_split)
    # the sampler's episode i of epoch e depends only on (seed, e, i): processes take alternate episodes
    with argument_check(args, "n_way", "n_shot", "n_query", "train_classes"):
        sampler = EpisodeSampler(train_ds, n_way=args.n_way, n_shot=args.n_shot, n_query=args.n_query,
                                 num_episodes=args.max_steps * accelerator.num_processes, seed=args.seed,
                                 classes=args.parsed_train_classes(), variable=args.variable_episodes)
    check_evaluation_sets(args)
    collator = EpisodeCollator(args.image_size, simclr_probability=args.simclr_probability)
    train_dl = episode_loader(train_ds, sampler, collator, num_workers=args.num_workers,
                              skip_unreadable=args.skip_unreadable_images)
    with argument_check(args, "backbone", "backbone_kwargs"):
        model = build_model(args)
    if args.recipe == "official":
        lr = args.lr or 6e-4
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        lr = args.lr or 1e-3
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    total = args.max_steps
    factor = staircase(args.decay_every) if args.recipe == "official" else \
        (lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    run = run_identity(args, accelerator, NO_EFFECT_ON_WEIGHTS)
    net = accelerator.unwrap_model(model)
    decayed = decayed_parameters(net)
    description = (f"{args.model} on {args.backbone}: {sum(p.numel() for p in net.parameters()):,} parameters | "
                   f"{args.n_way}-way {args.n_shot}-shot {args.n_query}-query episodes "
                   f"({'variable' if args.variable_episodes else 'fixed'}, SimCLR p={args.simclr_probability}) "
                   f"from classes {args.train_classes} of {args.dataset} | {accelerator.num_processes} process(es) "
                   f"| {total} steps")
    counts = {"simclr_episodes": 0, "episodes": 0}
    skipped: set = set()

    def step(batch):
        skipped.update(batch["skipped"])
        counts["episodes"] += 1
        counts["simclr_episodes"] += int(batch["simclr"])
        with accelerator.autocast():
            out = model(query_pixel_values=batch["query_pixel_values"],
                        support_pixel_values=batch["support_pixel_values"],
                        support_labels=batch["support_labels"], query_labels=batch["query_labels"])
        loss = out.loss
        if args.recipe == "official" and args.weight_decay:
            loss = loss + args.weight_decay * sum(p.pow(2).sum() for p in decayed)
        return loss

    def evaluate_run(summary: dict) -> None:
        summary["results"] = evaluate_all(model, args, accelerator, skipped if args.skip_unreadable_images else None)
        if args.skip_unreadable_images:
            summary["skipped_unreadable_files"] = report_skipped(skipped, accelerator)
            summary["skipped_unreadable_images"] = len(summary["skipped_unreadable_files"])
        summary["replicas_in_sync"] = replicas_in_sync(model, accelerator)

    def write(summary: dict, out_dir: Path) -> None:
        if args.attention_maps:
            from .attention_maps import write_attention_maps

            summary["attention_maps"] = [str(p) for p in write_attention_maps(net, args, out_dir / "attention")]
        if args.save_model:
            from ..models.crosstransformer_hub import save_fewshot_folder

            folder = save_fewshot_folder(net, out_dir / "model", image_size=args.image_size,
                                         results=summary["results"], overwrite=True,   # the run owns output_dir
                                         training=dataclasses.asdict(args), dataset=args.dataset)
            summary["model_dir"] = str(folder)
            accelerator.print(f"Hub-ready model folder: {folder}")

    return TrainingPlan(model=model, optimizer=optimizer, scheduler=scheduler, dataloader=train_dl, total_steps=total,
                        run=run, step=step, evaluate=evaluate_run, write=write,
                        facts={"model": args.model, "backbone": args.backbone, "dataset": args.dataset},
                        fit_facts=lambda: {"lr": lr, "simclr_episodes_this_process": counts["simclr_episodes"],
                                           "episodes_this_process": counts["episodes"]},
                        epoch_hooks=[sampler],
                        grad_transform=normalize_gradients if args.recipe == "official" else None,
                        description=description)


def check_evaluation_sets(args: FewShotTrainingArguments) -> None:
    """Every test set of ``args`` against its data, before training starts (a setting that cannot work was found
    after training, with a traceback and nothing saved): the dataset and split exist, the classes exist, and test
    episodes of ``eval_way`` classes with the most ``eval_shots`` plus ``eval_queries`` images each can be drawn from
    the pool. Raises :class:`BadArgumentError` naming the setting."""
    from ..data.episodes import EpisodeSampler

    for name, split, classes in args.parsed_eval_sets():
        with argument_check(args, "eval_sets"):
            ds = load_split(name, split)
        pool, chosen = _pool(ds, classes, args.eval_pool_per_class, args.seed)
        labels = [int(x) for x in ds.select(pool.tolist())["label"]] if len(pool) else []
        present = sorted(set(labels))
        missing = [c for c in chosen if c not in present]
        if missing:
            raise BadArgumentError(f"`eval_sets` entry {name}:{split}: classes {missing} have no image (classes "
                                   f"present: {sorted(set(int(x) for x in ds['label']))})")
        with argument_check(args, "eval_way", "eval_shots", "eval_queries", "eval_pool_per_class"):
            try:
                EpisodeSampler(labels, n_way=args.eval_way, n_shot=max(args.parsed_shots()), n_query=args.eval_queries,
                               num_episodes=1, seed=args.seed)
            except ValueError as err:
                raise ValueError(f"the test episodes of {name}:{split} ({args.eval_way}-way, up to "
                                 f"{max(args.parsed_shots())}-shot, {args.eval_queries} queries per class) cannot be "
                                 f"drawn: {err}") from None


def evaluate_all(model, args: FewShotTrainingArguments, accelerator, skipped: set | None = None) -> list[dict]:
    """Every test set x shot count of ``args``: one row each with accuracy, CI and episode count. ``skipped``: see
    :func:`embed_pool` (unreadable images leave the pool)."""
    rows = []
    net = accelerator.unwrap_model(model)
    net.eval()
    from_pixels = not net.episode_independent_features
    for name, split, classes in args.parsed_eval_sets():
        ds = load_split(name, split)
        pool, chosen = _pool(ds, classes, args.eval_pool_per_class, args.seed)
        if from_pixels:   # features depend on the episode's support set: keep the images, run each episode
            inputs, ok = read_pool(ds, pool, args.image_size, skipped)
            readable = torch.tensor(ok, dtype=torch.bool)
        else:             # every image embedded once
            inputs, readable = embed_pool(model, ds, pool, args.image_size, accelerator, skipped=skipped)
        labels = [int(x) for x in ds.select(pool.tolist())["label"]] if len(pool) else []
        if not bool(readable.all()):
            inputs = inputs[readable.to(inputs.device)]
            labels = [label for label, ok in zip(labels, readable.tolist()) if ok]
        for shots in args.parsed_shots():
            res = evaluate_episodes(model, inputs, labels, args.eval_way, shots, args.eval_queries,
                                    args.eval_episodes, args.seed + 1, accelerator, from_pixels=from_pixels)
            row = {"dataset": name, "split": split, "classes": chosen, "way": args.eval_way, "shot": shots,
                   "queries": args.eval_queries, **res}
            rows.append(row)
            accelerator.print(f"{name} ({split}, classes {chosen}) {args.eval_way}-way {shots}-shot: "
                              f"{100 * res['accuracy']:.2f} ± {100 * res['ci95']:.2f} % over {res['episodes']} episodes")
    return rows
