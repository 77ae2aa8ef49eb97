"""Image classification with Accelerate: any timm model (relzoo's included), one CPU or many GPUs/processes.

The official SAN recipe is the default: SGD (lr 0.1, momentum 0.9, weight decay 1e-4 on every parameter), cosine
schedule stepped once per epoch, label smoothing with ``1 - eps`` on the target and ``eps / (K - 1)`` elsewhere,
RandomResizedCrop + flip for training and Resize + CenterCrop for evaluation.

Checkpoints (:mod:`relzoo.train.checkpoints`: model, optimizer, scheduler, every process's RNG, the step counter,
checksummed) are written to a temporary folder and renamed into place, so a crash never leaves a half-written
checkpoint; ``resume=True`` continues from the newest intact one exactly where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

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

#: arguments that do not change the trained weights (used after training, or memory only): a resumed run may change them
NO_EFFECT_ON_WEIGHTS = ("eval_split", "eval_samples", "eval_batch_size", "recalibrate_bn_batches", "many_shot_above",
                        "few_shot_below", "grad_checkpointing")


@dataclass
class ClassifierTrainingArguments(RunArguments):
    """Arguments of :func:`train_classifier` (and of ``scripts/train_classifier.py``)."""

    model: str = field(default="san10_pair", metadata={"help": "timm model name (relzoo's are registered)"})
    model_kwargs: str | None = field(default=None, metadata={
        "help": "JSON dict of extra timm.create_model arguments. Default: {} except for a SAN below 128 px, which gets "
                "a 3x3 last-stage footprint ({\"kernels\": [3, 7, 7, 7, 3]}) so that reflection padding fits"})
    pretrained: bool = field(default=False, metadata={"help": "start from the model's pretrained weights"})
    dataset: str = field(default="fashion_mnist",
                         metadata={"help": "fashion_mnist, digits, an imagefolder root or a save_to_disk folder"})
    train_split: str = field(default="train", metadata={"help": "training split"})
    eval_split: str = field(default="test", metadata={"help": "evaluation split"})
    train_samples: int | None = field(default=None, metadata={"help": "use a seeded random subset of this size"})
    skip_unreadable_images: bool = field(default=False, metadata={
        "help": "leave out images that cannot be decoded (truncated, damaged) instead of stopping; they are counted "
                "and listed at the end"})
    eval_samples: int | None = field(default=2000, metadata={"help": "evaluate on a seeded subset (None: all)"})
    in_chans: int = field(default=3, metadata={"help": "image channels fed to the model (1 or 3)"})
    image_size: int = field(default=64, metadata={
        "help": "training/eval crop size (the released SAN kernels need >= 128; [3,7,7,7,3] needs >= 64)"})
    crop_pct: float = field(default=0.875, metadata={"help": "eval: resize to image_size / crop_pct, then crop"})
    crop_scale_min: float = field(default=0.5, metadata={"help": "RandomResizedCrop minimum area (official: 0.08)"})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips in training"})
    output_dir: str = field(default="outputs/san10_pair-fashion_mnist", metadata={"help": "where everything goes"})
    batch_size: int = field(default=32, metadata={"help": "training batch size per process"})
    eval_batch_size: int = field(default=64, metadata={"help": "evaluation batch size per process"})
    epochs: int = field(default=1, metadata={"help": "epochs (the cosine schedule spans them)"})
    max_steps: int | None = field(default=120, metadata={
        "help": "stop after this many optimizer steps; 0 or less: no cap (default keeps the demo under 5 minutes)"})
    lr: float | None = field(default=None, metadata={
        "help": "SGD learning rate; default: the official 0.1 per 256 images, scaled linearly to the global batch"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay on all parameters"})
    label_smoothing: float = field(default=0.1, metadata={"help": "eps: target 1-eps, other classes eps/(K-1)"})
    schedule: str = field(default="cosine", metadata={
        "help": "cosine (per step over the run), cosine_epoch (official: stepped once per epoch), constant"})
    grad_checkpointing: bool = field(default=False, metadata={"help": "activation checkpointing (timm models)"})
    recalibrate_bn_batches: int = field(default=10, metadata={
        "help": "before evaluating, re-estimate BatchNorm statistics on this many training batches (0: off). Short "
                "runs need it: running statistics lag the weights, and SAN's multiplicative attention amplifies that"})
    plugin: str = field(default="none", metadata={
        "help": "training-only relation plug-in: none, batchformer (V1, before the classifier), batchformer_v2 (after "
                "--plugin_after), apinet (pairs within class-balanced batches). Inference and the saved model are "
                "the plain network"})
    plugin_after: str | None = field(default=None, metadata={
        "help": "batchformer_v2: comma-separated module names to insert after (default: the block two thirds deep "
                "of a ViT, as the official DeiT's blocks.8 of 12; layer3 of a ResNet)"})
    plugin_lr_scale: float = field(default=1.0, metadata={
        "help": "learning rate of the plug-in's own parameters relative to --lr (BatchFormer's long-tail code: 0.1)"})
    samples_per_class: int = field(default=4, metadata={
        "help": "apinet: class-balanced batches of batch_size / samples_per_class classes x this many images "
                "(official 30 x 4)"})
    many_shot_above: int | None = field(default=None, metadata={
        "help": "long-tail report: classes with more training images are many-shot (default 100 as the long-tail "
                "papers; fashion_mnist_lt: 1200, CIFAR-100-LT's 100 of 500 scaled to 6000)"})
    few_shot_below: int | None = field(default=None, metadata={
        "help": "long-tail report: classes with fewer training images are few-shot (default 20; fashion_mnist_lt: "
                "240)"})

    INTEGER_BOUNDS: ClassVar[dict[str, int]] = {
        **RunArguments.INTEGER_BOUNDS, "batch_size": 1, "eval_batch_size": 1, "epochs": 1, "image_size": 1,
        "recalibrate_bn_batches": 0, "train_samples": 1, "eval_samples": 1}
    OPTIONAL_INTEGERS: ClassVar[dict[str, str]] = {**RunArguments.OPTIONAL_INTEGERS, "train_samples": " or None (all)",
                                                   "eval_samples": " or None (all)"}

    def validate_task(self) -> None:
        if self.schedule not in ("cosine_epoch", "cosine", "constant"):
            raise ValueError(f"`schedule` must be cosine_epoch, cosine or constant, got {self.schedule!r}")
        import relzoo  # noqa: F401  (registers the plug-ins)

        from ..models.plugins import get_plugin, plugin_names

        plugin = get_plugin(self.plugin)
        for option in dict.fromkeys(o for name in plugin_names() for o in get_plugin(name).options):
            given = getattr(self, option) is not None and _field_default(self, option) is None
            if given and (plugin is None or option not in plugin.options):
                takers = [name for name in plugin_names() if option in get_plugin(name).options]
                raise ValueError(f"`{option}` is for --plugin {' / '.join(takers)}, got it with --plugin {self.plugin}")
        if not (math.isfinite(self.plugin_lr_scale) and self.plugin_lr_scale > 0):
            raise ValueError(f"`plugin_lr_scale` must be a positive number, got {self.plugin_lr_scale!r}")
        if plugin is not None and plugin.check_arguments is not None:
            plugin.check_arguments(self)
        for name in ("many_shot_above", "few_shot_below"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"`{name}` must be an int >= 0 or None (default), got {value!r}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"`in_chans` must be 1 or 3, got {self.in_chans}")
        ranges = {"label_smoothing": (0, 1, "[0, 1)"), "momentum": (0, 1, "[0, 1)"),
                  "crop_pct": (0, 1, "(0, 1]"), "crop_scale_min": (0, 1, "(0, 1]")}
        for name, (low, high, text) in ranges.items():
            value = getattr(self, name)
            inside = (low <= value < high) if text.startswith("[") else (low < value <= high)
            if not math.isfinite(value) or not inside:
                raise ValueError(f"`{name}` must be in {text}, got {value!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"`lr` must be a positive number (or None: scaled default), got {self.lr!r}")
        check_image_size(self.image_size, max(self.batch_size, self.eval_batch_size), self.in_chans)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay!r}")
        if self.model_kwargs is None:
            return
        try:
            kwargs = json.loads(self.model_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"`model_kwargs` must be a JSON object, got {self.model_kwargs!r} ({err})") from err
        if not isinstance(kwargs, dict):
            raise ValueError(f"`model_kwargs` must be a JSON object, got {self.model_kwargs!r}")


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """Cross-entropy against ``q = 1 - eps`` on the target and ``eps / (K - 1)`` on every other class (the official
    SAN smoothing; torch's ``label_smoothing`` puts ``eps / K`` on all classes instead). Mean over the batch.

    ``logits: (N, K)``, ``target: (N,)`` int64.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    if eps == 0:
        return nll.mean()
    k = logits.shape[-1]
    others = -logp.sum(dim=-1) - nll  # sum of -log p over the K - 1 non-target classes
    return ((1 - eps) * nll + eps / (k - 1) * others).mean()


def _lr_factor(schedule: str, steps_per_epoch: int, epochs: int, total_steps: int):
    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if schedule == "cosine_epoch":  # torch CosineAnnealingLR(T_max=epochs) stepped once per epoch
            return 0.5 * (1 + math.cos(math.pi * (step // steps_per_epoch) / epochs))
        return 0.5 * (1 + math.cos(math.pi * step / total_steps))

    return factor


def _subset(ds, n: int | None, seed: int):
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def evaluate(model, dataloader, accelerator, skipped: set | None = None) -> dict:
    """Top-1 / top-5 accuracy (fractions) and mean loss over a prepared dataloader, all processes gathered.
    Samples labelled ``-1`` (stand-ins for unreadable images) are left out."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    per_class: dict[int, list[int]] = {}
    with torch.no_grad():
        for batch in dataloader:
            if skipped is not None:
                skipped.update(batch.get("skipped", ()))
            with accelerator.autocast():
                logits = model(batch["pixel_values"])
            logits, labels = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
            logits, labels = logits[labels >= 0], labels[labels >= 0]
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            correct1 += (top[:, 0] == labels).sum().item()
            for c, hit in zip(labels.tolist(), (top[:, 0] == labels).tolist()):
                per_class.setdefault(c, [0, 0])[hit] += 1
            correct5 += (top == labels[:, None]).any(dim=-1).sum().item()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            total += labels.numel()
    return {"top1": correct1 / max(total, 1), "top5": correct5 / max(total, 1), "eval_loss": loss_sum / max(total, 1),
            "eval_samples": total,
            "per_class_top1": {c: hits / (hits + misses) for c, (misses, hits) in sorted(per_class.items())}}


def shot_group_accuracy(per_class_top1: dict, train_counts: dict, many: int, few: int) -> dict:
    """Long-tail report: mean per-class top-1 over the many-shot (more than ``many`` training images), medium and
    few-shot (fewer than ``few``) classes, as the long-tail papers give it (None for an empty group), and the
    groups themselves."""
    from ..data.sampling import shot_groups

    groups = shot_groups(train_counts, many=many, few=few)
    report = {"shot_groups": groups, "shot_thresholds": {"many_above": many, "few_below": few}}
    for name, classes in groups.items():
        scores = [per_class_top1[c] for c in classes if c in per_class_top1]
        report[f"{name}_top1"] = sum(scores) / len(scores) if scores else None
    return report


class ClassifierTrainingModule(torch.nn.Module):
    """What the trainer prepares (DDP wraps it, so every loss is computed inside one forward): ``net``, the timm
    model, with its training-only plug-in if any. ``forward(pixel_values)`` -> ``net``'s logits;
    ``forward(pixel_values, labels)`` -> the training loss: ``loss_fn`` on the logits (BatchFormer: over both
    streams, labels duplicated) or API-Net's pair loss with ``loss_fn`` as its cross-entropy."""

    def __init__(self, net: torch.nn.Module, plugin, loss_fn):
        super().__init__()
        self.net, self.plugin, self.loss_fn = net, plugin, loss_fn     # plugin: a TrainingPlugin or None

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            return self.net(pixel_values)
        if self.plugin is None:
            return self.loss_fn(self.net(pixel_values), labels)
        return self.plugin.loss(self.net, pixel_values, labels, self.loss_fn)

    def plain_network(self) -> torch.nn.Module:
        """A copy of ``net`` without the plug-in: the inference network, with exactly the timm model's keys."""
        import copy

        net = copy.deepcopy(self.net)
        return net if self.plugin is None else self.plugin.remove(net)

    def plugin_parameters(self) -> list[torch.nn.Parameter]:
        return [] if self.plugin is None else self.plugin.parameters(self.net)


def _field_default(args, name: str):
    return next(f.default for f in dataclasses.fields(args) if f.name == name)


def resolve_model_kwargs(args: ClassifierTrainingArguments) -> dict:
    """``model_kwargs`` as a dict; without it, what the model's family recommends at this image size (see the
    field's help)."""
    if args.model_kwargs is not None:
        return json.loads(args.model_kwargs)
    import relzoo  # noqa: F401  (registers the families)

    from ..registry import recommended_model_kwargs

    return recommended_model_kwargs(args.model, args.image_size)


def recalibrate_batchnorm(model, dataloader, num_batches: int, accelerator) -> None:
    """Re-estimate every BatchNorm's running statistics as the plain average over ``num_batches`` training batches
    (``torch.optim.swa_utils.update_bn``), then average them over processes so all ranks hold the same model."""
    from itertools import islice

    from accelerate.utils import reduce

    batches = [b["pixel_values"] for b in islice(dataloader, num_batches)]
    net = accelerator.unwrap_model(model)  # not through DDP, which would broadcast rank 0's buffers each forward
    with accelerator.autocast():
        torch.optim.swa_utils.update_bn(batches, net)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(reduce(module.running_mean, reduction="mean"))
            module.running_var.copy_(reduce(module.running_var, reduction="mean"))


def train_classifier(args: ClassifierTrainingArguments) -> dict:
    """Train, evaluate and save; returns a summary dict (also written to ``output_dir/results.json``)."""
    return run_training(args, _build_classifier)


def _build_classifier(args: ClassifierTrainingArguments, accelerator) -> TrainingPlan:
    import timm
    from timm.data import resolve_data_config

    import relzoo  # noqa: F401  (registers relzoo models with timm)

    from ..data import TransformedImageDataset, build_transform, class_names, collate_images, load_image_dataset
    from ..hub import save_hub_folder
    from ..models.plugins import get_plugin

    with argument_check(args, "dataset", "train_split", "eval_split"):
        train_hf = _subset(load_image_dataset(args.dataset, args.train_split), args.train_samples, args.seed)
        eval_hf = _subset(load_image_dataset(args.dataset, args.eval_split), args.eval_samples, args.seed)
    names = class_names(train_hf)
    if not timm.is_model(args.model):
        raise BadArgumentError(f"`model` must be a timm model name (relzoo's included, see timm.list_models()), got "
                               f"{args.model!r}")
    with argument_check(args, "model", "model_kwargs"):
        model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=len(names),
                                  in_chans=args.in_chans, **resolve_model_kwargs(args))
    if args.batch_size < 2 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise BadArgumentError(f"`batch_size` must be at least 2 for {args.model}: BatchNorm in training needs more than "
                               "one value per channel (and BatchFormer a batch to attend over)")
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    data_cfg = resolve_data_config(model=model)
    mean, std = data_cfg["mean"], data_cfg["std"]
    if args.in_chans == 1 and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    plugin = get_plugin(args.plugin)
    module = ClassifierTrainingModule(model if plugin is None else plugin.add(model, args), plugin,
                                      partial(smoothed_cross_entropy, eps=args.label_smoothing))
    train_ds = TransformedImageDataset(
        train_hf, build_transform(args.image_size, True, mean, std, hflip=args.hflip, scale=(args.crop_scale_min, 1.0)),
        args.in_chans, seed=args.seed, skip_unreadable=args.skip_unreadable_images)
    eval_ds = TransformedImageDataset(eval_hf, build_transform(args.image_size, False, mean, std, crop_pct=args.crop_pct),
                                      args.in_chans, skip_unreadable=args.skip_unreadable_images, mask_skipped=True)
    train_labels = list(train_hf["label"])
    epoch_hooks: list = [train_ds]
    sampler = plugin.batch_sampler(train_labels, args) if plugin and plugin.batch_sampler else None
    if sampler is not None:   # the plug-in's own batches (API-Net: n classes x n images, every image paired)
        epoch_hooks.append(sampler)
        batching = dict(batch_sampler=sampler)
    else:
        batching = dict(batch_size=args.batch_size, shuffle=True, drop_last=True)
    # the loader's own generator: starting an iterator draws a seed, which must not come from the global RNG (that of
    # dropout and drop-path), else a resumed run (a new iterator mid-epoch) would draw different masks
    train_dl = torch.utils.data.DataLoader(train_ds, **batching, num_workers=args.num_workers,
                                           collate_fn=collate_images, generator=torch.Generator().manual_seed(args.seed))
    eval_dl = torch.utils.data.DataLoader(eval_ds, batch_size=args.eval_batch_size, num_workers=args.num_workers,
                                          collate_fn=collate_images)
    lr = args.lr if args.lr is not None else 0.1 * args.batch_size * accelerator.num_processes / 256
    extra = {id(p) for p in module.plugin_parameters()}
    groups = [{"params": [p for p in module.parameters() if id(p) not in extra], "lr": lr}]
    if extra:
        groups.append({"params": module.plugin_parameters(), "lr": lr * args.plugin_lr_scale})
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    model, optimizer, train_dl, eval_dl = accelerator.prepare(module, optimizer, train_dl, eval_dl)
    steps_per_epoch = len(train_dl)
    if steps_per_epoch == 0:
        raise BadArgumentError(f"`batch_size` {args.batch_size} x {accelerator.num_processes} processes is larger than the "
                         f"training set ({len(train_ds)} samples)")
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None and args.max_steps > 0:
        total_steps = min(total_steps, args.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(args.schedule, steps_per_epoch, args.epochs, total_steps))
    run = run_identity(args, accelerator, NO_EFFECT_ON_WEIGHTS, num_classes=len(names),
                       resolved_model_kwargs=resolve_model_kwargs(args))
    n_plugin = sum(p.numel() for p in module.plugin_parameters())
    n_net = sum(p.numel() for p in module.parameters()) - n_plugin
    plugin_note = "" if plugin is None else f" + {args.plugin} ({n_plugin:,} training-only)"
    skipped = set()

    def step(batch):
        skipped.update(batch["skipped"])
        with accelerator.autocast():
            return model(batch["pixel_values"], batch["labels"])

    def evaluate_run(summary: dict) -> None:
        if args.recalibrate_bn_batches:
            recalibrate_batchnorm(model, train_dl, args.recalibrate_bn_batches, accelerator)
        metrics = evaluate(model, eval_dl, accelerator, skipped)
        if args.skip_unreadable_images:
            summary["skipped_unreadable_files"] = report_skipped(skipped, accelerator)
            summary["skipped_unreadable_images"] = len(summary["skipped_unreadable_files"])
        summary.update(metrics)
        lt = args.dataset == "fashion_mnist_lt"
        many = args.many_shot_above if args.many_shot_above is not None else (1200 if lt else 100)
        few = args.few_shot_below if args.few_shot_below is not None else (240 if lt else 20)
        summary["train_class_counts"] = dict(sorted(Counter(train_labels).items()))
        summary.update(shot_group_accuracy(metrics["per_class_top1"], summary["train_class_counts"], many, few))
        summary["replicas_in_sync"] = replicas_in_sync(model, accelerator)
        accelerator.print(f"eval on {metrics['eval_samples']} {args.eval_split} images: top-1 {metrics['top1']:.4f} "
                          f"top-5 {metrics['top5']:.4f} loss {metrics['eval_loss']:.4f} "
                          f"({summary['train_time_s']:.0f} s training)")
        if sum(bool(v) for v in summary["shot_groups"].values()) > 1:
            accelerator.print("per-class-mean top-1 by training images: " + ", ".join(
                f"{g} ({len(summary['shot_groups'][g])} classes) {summary[g + '_top1']:.4f}"
                for g in ("many", "medium", "few") if summary["shot_groups"][g]))

    def write(summary: dict, out_dir: Path) -> None:
        if args.save_model:
            dataset_name = args.dataset if "/" not in args.dataset else Path(args.dataset).name
            folder = save_hub_folder(
                accelerator.unwrap_model(model).plain_network(), out_dir / "model", class_names=names,
                image_size=args.image_size, crop_pct=args.crop_pct, mean=mean, std=std,
                model_id=f"{args.model}-{dataset_name}", dataset=dataset_name,
                metrics={k: summary[k] for k in ("top1", "top5")}, training=dataclasses.asdict(args),
                overwrite=True)   # the run owns output_dir (see run_folder)
            summary["model_dir"] = str(folder)
            accelerator.print(f"Hub-ready model folder: {folder}")

    description = (f"{args.model}: {n_net:,} parameters{plugin_note} | {len(train_ds)} train / {len(eval_ds)} eval "
                   f"samples | {accelerator.num_processes} process(es) ({accelerator.distributed_type}) | "
                   f"{steps_per_epoch} steps/epoch, {total_steps} steps")
    return TrainingPlan(model=model, optimizer=optimizer, scheduler=scheduler, dataloader=train_dl,
                        total_steps=total_steps, run=run, step=step, evaluate=evaluate_run, write=write,
                        facts={"model": args.model, "dataset": args.dataset, "plugin": args.plugin},
                        fit_facts=lambda: {"lr": lr}, epoch_hooks=epoch_hooks, description=description)
