"""HSNet fine-tuning and evaluation on the shared engine (``scripts/finetune_hsnet.py``).

Training follows the official recipe: 1-shot episodes, Adam with a constant learning rate (1e-3), the backbone
frozen. Evaluation runs 1-shot and 5-shot test episodes (configurable) on the fold's unseen classes and reports
mIoU and FB-IoU (:class:`relzoo.metrics.FewShotSegmentationIoU`); the episodes are shared out over processes and
their counts summed. ``--pictures N`` writes PNG panels (support with its mask, query, prediction, ground truth).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from .arguments import RunArguments
from .engine import (
    TrainingEngine,
    argument_check,
    check_image_size,
    make_accelerator,
    replicas_in_sync,
    run_identity,
)
from .run import TrainingPlan, run_training

DATASETS = ("fashion_mnist_composites", "pascal5i", "coco20i", "fss1000")
FOLDS = {"fashion_mnist_composites": 2, "pascal5i": 4, "coco20i": 4, "fss1000": 1}
#: arguments that do not change the trained weights (used after training, or memory only): a resumed run may change them
NO_EFFECT_ON_WEIGHTS = ("eval_shots", "eval_episodes", "eval_batch_size", "pictures")
#: what identifies the backbone pretraining stage (stage 0)
PRETRAINING_ARGUMENTS = ("backbone", "backbone_kwargs", "backbone_pretrained", "backbone_weights", "normalization",
                         "pretrain_backbone_steps", "pretrain_batch_size", "pretrain_lr", "dataset", "fold",
                         "image_size", "seed", "data_dir", "mixed_precision", "cpu")


@dataclass
class SegmentationTrainingArguments(RunArguments):
    backbone: str = field(default="resnet50", metadata={"help": "timm CNN (official taps for resnet50/101, vgg16)"})
    backbone_kwargs: str | None = field(default=None, metadata={"help": "JSON dict of timm.create_model arguments"})
    backbone_pretrained: bool = field(default=False, metadata={
        "help": "timm's ImageNet weights for the frozen backbone (needs the Hub or its cache)"})
    backbone_weights: str | None = field(default=None, metadata={
        "help": "a state dict (.safetensors, or .pt read with weights_only) for the frozen backbone; keys may carry "
                "a 'backbone.' prefix (e.g. a relzoo few-shot classifier's model.safetensors)"})
    normalization: str = field(default="auto", metadata={
        "help": "image mean/std: imagenet, half (0.5, as relzoo's few-shot classifiers) or auto (the "
                "preprocessor_config.json beside --backbone_weights when there is one, else imagenet)"})
    pretrain_backbone_steps: int = field(default=0, metadata={
        "help": "fashion_mnist_composites only: first train the backbone for N steps on semantic segmentation of the "
                "fold's training classes on training canvases (the test classes never appear), then freeze it as "
                "HSNet does with ImageNet weights (which cannot be downloaded offline); 0: off"})
    pretrain_batch_size: int = field(default=8, metadata={"help": "canvases per pretraining step and process"})
    pretrain_lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate of the pretraining "
                                                                "(one-cycle schedule, weight decay 1e-4)"})
    dataset: str = field(default="fashion_mnist_composites", metadata={"help": f"one of {DATASETS}"})
    fold: int = field(default=0, metadata={"help": "fold: its classes are the test classes, never seen in training"})
    image_size: int = field(default=128, metadata={"help": "canvas side (official: 400)"})
    batch_size: int = field(default=4, metadata={"help": "1-shot training episodes per step and process"})
    max_steps: int = field(default=300, metadata={"help": "optimizer steps"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (official 1e-3, constant)"})
    eval_shots: str = field(default="1,5", metadata={"help": "comma-separated shots of the test episodes"})
    eval_episodes: int = field(default=300, metadata={"help": "test episodes per shot count (official 1000)"})
    eval_batch_size: int = field(default=8, metadata={"help": "test episodes per forward"})
    pictures: int = field(default=0, metadata={"help": "write PNG panels of this many 1-shot test episodes"})
    output_dir: str = field(default="outputs/hsnet", metadata={"help": "where everything goes"})
    stop_after_steps: int | None = field(default=None, metadata={
        "help": "stop (as if killed) after this many steps of this invocation; for testing resume"})
    data_dir: str | None = field(default=None, metadata={
        "help": "fashion_mnist_composites: folder of the Fashion-MNIST idx files (default: the Debian package's); "
                "pascal5i / coco20i / fss1000: the folder holding VOC2012 / COCO2014 / FSS-1000 (required)"})
    split_dir: str | None = field(default=None, metadata={
        "help": "pascal5i / coco20i / fss1000: the official split folder (data/splits/<dataset>); without it the "
                "splits are derived from the masks (see relzoo.data.segmentation_folders)"})

    INTEGER_BOUNDS: ClassVar[dict[str, int]] = {
        **RunArguments.INTEGER_BOUNDS, "pretrain_backbone_steps": 0, "pretrain_batch_size": 1, "image_size": 32,
        "batch_size": 1, "max_steps": 1, "eval_episodes": 1, "eval_batch_size": 1, "pictures": 0, "fold": 0}

    def parsed_backbone_kwargs(self) -> dict:
        return json.loads(self.backbone_kwargs) if self.backbone_kwargs else {}

    def parsed_shots(self) -> list[int]:
        return [int(s) for s in self.eval_shots.split(",") if s.strip()]

    def validate_task(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"`dataset` must be one of {DATASETS}, got {self.dataset!r}")
        if self.normalization not in ("auto", "imagenet", "half"):
            raise ValueError(f"`normalization` must be auto, imagenet or half, got {self.normalization!r}")
        check_image_size(self.image_size, max(2 * self.batch_size, self.pretrain_batch_size))
        if self.fold >= FOLDS[self.dataset]:
            raise ValueError(f"`fold` must be in 0..{FOLDS[self.dataset] - 1} for {self.dataset}, got {self.fold}")
        if self.dataset != "fashion_mnist_composites" and (self.data_dir is None or not Path(self.data_dir).is_dir()):
            raise ValueError(f"`data_dir` must be the folder holding the {self.dataset} data, got {self.data_dir!r}")
        if self.split_dir is not None and (self.dataset == "fashion_mnist_composites"
                                           or not Path(self.split_dir).is_dir()):
            raise ValueError(f"`split_dir` must be a folder and is only for pascal5i / coco20i / fss1000, got "
                             f"{self.split_dir!r} with dataset {self.dataset!r}")
        for name in ("lr", "pretrain_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"`{name}` must be a positive number, got {value!r}")
        if self.pretrain_backbone_steps and self.dataset != "fashion_mnist_composites":
            raise ValueError(f"`pretrain_backbone_steps` is for the built-in fashion_mnist_composites (its training "
                             f"classes are known), got dataset {self.dataset!r}")
        try:
            shots = self.parsed_shots()
        except ValueError:
            raise ValueError(f"`eval_shots` must be comma-separated integers, got {self.eval_shots!r}") from None
        if not shots or min(shots) < 1:
            raise ValueError(f"`eval_shots` must be comma-separated integers >= 1, got {self.eval_shots!r}")
        try:
            kwargs = self.parsed_backbone_kwargs()
        except json.JSONDecodeError as err:
            raise ValueError(f"`backbone_kwargs` must be a JSON dict, got {self.backbone_kwargs!r} ({err})") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"`backbone_kwargs` must be a JSON dict, got {self.backbone_kwargs!r}")
        if self.backbone_weights is not None and not Path(self.backbone_weights).is_file():
            raise ValueError(f"`backbone_weights` {self.backbone_weights!r} does not exist or is not a file")


class _LevelSegmenter(torch.nn.Module):
    """Backbone pretraining head: the last tap of each HSNet level, resized to the finest one, concatenated, a 1x1
    convolution to ``num_labels`` classes, upsampled to the image; ``forward`` returns the cross-entropy."""

    def __init__(self, backbone, taps: list[str], num_labels: int, num_channels: int):
        from ..models.hsnet_taps import FeatureTaps

        super().__init__()
        self.backbone, self.taps = backbone, FeatureTaps(backbone, taps)
        with torch.no_grad(), self.taps:
            was = backbone.training
            backbone.eval()
            channels = sum(f.shape[1] for f in self.taps.run(torch.zeros(1, num_channels, 64, 64)))
            backbone.train(was)
        self.head = torch.nn.Conv2d(channels, num_labels, 1)
        # train only what reaches the taps (layers after the last one, e.g. the classifier, would leave DDP waiting
        # for gradients that never come)
        backbone.requires_grad_(True)
        was = backbone.training
        backbone.eval()
        self(torch.zeros(1, num_channels, 64, 64), torch.zeros(1, 64, 64, dtype=torch.long)).backward()
        backbone.train(was)
        for p in self.parameters():
            if p.grad is None:
                p.requires_grad_(False)
            p.grad = None

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        with self.taps:
            features = self.taps.run(pixel_values)
        size = features[0].shape[-2:]
        x = torch.cat([F.interpolate(f, size, mode="bilinear", align_corners=False) for f in features], dim=1)
        logits = F.interpolate(self.head(x), labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, labels)


def pretrain_backbone(model, args: SegmentationTrainingArguments) -> dict:
    """Stage 0 (``--pretrain_backbone_steps``): train ``model.backbone`` on semantic segmentation of the fold's
    training classes (:class:`relzoo.data.segmentation.CompositeSegmentation`), with checkpoints and exact resume in
    ``output_dir/backbone``; the result is written atomically, with its checksums, to
    ``output_dir/backbone/final/backbone.safetensors`` and loaded again (checked) by a resumed run, which then skips
    this stage. Leaves the backbone frozen and in eval mode."""
    from safetensors.torch import load_file, save_file

    from ..checksums import verify_checksums, write_checksums
    from ..data.segmentation import CompositeSegmentation
    from ..fileio import atomic_folder

    folder = Path(args.output_dir) / "backbone"
    done = folder / "final" / "backbone.safetensors"
    if args.resume and done.is_file():
        verify_checksums(done.parent, required=True)   # a damaged file is named, never loaded
        model.backbone.load_state_dict(load_file(done))
        return {"steps": args.pretrain_backbone_steps, "loaded": str(done)}
    accelerator = make_accelerator(args.cpu, args.mixed_precision)
    mean, std = image_statistics(args)
    data = CompositeSegmentation(args.fold, samples=args.pretrain_backbone_steps * args.pretrain_batch_size *
                                 accelerator.num_processes, image_size=args.image_size, seed=args.seed + 2,
                                 data_dir=args.data_dir, mean=mean, std=std)
    levels = model.config.feature_taps
    net = _LevelSegmenter(model.backbone, [level[-1] for level in levels], data.num_labels, model.config.num_channels)
    loader = torch.utils.data.DataLoader(data, batch_size=args.pretrain_batch_size, drop_last=True,
                                         num_workers=args.num_workers)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=args.pretrain_lr,
                                  weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.pretrain_lr, total_steps=args.pretrain_backbone_steps)
    prepared, optimizer, loader = accelerator.prepare(net, optimizer, loader)
    run = {"stage": "backbone_pretraining", **{k: getattr(args, k) for k in PRETRAINING_ARGUMENTS},
           "num_processes": accelerator.num_processes}
    engine = TrainingEngine(accelerator, prepared, optimizer, scheduler, loader, folder, run,
                            args.pretrain_backbone_steps, log_every=args.log_every,
                            checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                            stop_after_steps=args.stop_after_steps, epoch_hooks=[data], desc="backbone")
    if args.resume:
        engine.resume()
    accelerator.print(f"stage 0: {args.backbone} pretrained on semantic segmentation of the training classes "
                      f"{data.classes} (+ background), {args.pretrain_backbone_steps} steps")

    def step(batch):
        with accelerator.autocast():
            return prepared(batch["pixel_values"], batch["labels"])

    summary = engine.fit(step)
    model.backbone.requires_grad_(False).eval()
    if not summary.get("interrupted") and accelerator.is_main_process:
        with atomic_folder(done.parent, overwrite=True) as tmp:
            save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(tmp / done.name))
            write_checksums(tmp)
    accelerator.wait_for_everyone()
    return summary


def image_statistics(args: SegmentationTrainingArguments) -> tuple[list[float], list[float]]:
    """The (mean, std) the episodes are normalised with (see ``--normalization``)."""
    from ..data.episodes import HALF
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    if args.normalization == "half":
        return list(HALF), list(HALF)
    if args.normalization == "auto" and args.backbone_weights is not None:
        config = Path(args.backbone_weights).parent / "preprocessor_config.json"
        if config.is_file():
            stats = json.loads(config.read_text())
            if "image_mean" in stats and "image_std" in stats:
                return [float(v) for v in stats["image_mean"]], [float(v) for v in stats["image_std"]]
            timm_cfg = stats.get("pretrained_cfg") or {}  # a TimmWrapperImageProcessor file (relzoo's SAN exports)
            if "mean" in timm_cfg and "std" in timm_cfg:
                return [float(v) for v in timm_cfg["mean"]], [float(v) for v in timm_cfg["std"]]
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def load_backbone_weights(model, path: str) -> dict:
    """Load a state dict into ``model.backbone`` (``backbone.`` prefixes stripped). The classifier may be missing,
    and its keys are left out when present (HSNet never runs it and holds none: ``pruned_backbone_modules``); any
    other missing, unexpected or mis-shaped key raises a ``ValueError`` naming it. Returns ``{"loaded": n,
    "missing_classifier": [...], "unused_classifier": [...]}``."""
    from ..fileio import load_checkpoint_safely

    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        raw = load_file(path)
    else:
        raw = load_checkpoint_safely(path, "backbone_weights")
        raw = raw["state_dict"] if isinstance(raw.get("state_dict"), dict) else raw
    prefixed = any(k.startswith("backbone.") for k in raw)
    state = {k.removeprefix("backbone."): v for k, v in raw.items() if k.startswith("backbone.") or not prefixed}
    pruned = tuple(f"{name}." for name in getattr(model, "pruned_backbone_modules", ()))
    unused = sorted(k for k in state if k.startswith(pruned))
    state = {k: v for k, v in state.items() if not k.startswith(pruned)}
    expected = model.backbone.state_dict()
    classifier = model.backbone.pretrained_cfg.get("classifier", "fc") if hasattr(model.backbone,
                                                                                   "pretrained_cfg") else "fc"
    heads = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier)) + ("pre_logits.",)
    shapes = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(v.shape)}" for k, v in state.items()
              if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = [k for k in missing if not k.startswith(heads)]
    if shapes or problems or unexpected:
        raise ValueError(f"`backbone_weights` {path!r} do not fit {model.config.backbone}: "
                         f"{len(shapes)} with other shapes {shapes[:3]}, {len(problems)} missing {problems[:3]}, "
                         f"{len(unexpected)} unexpected {unexpected[:3]}")
    model.backbone.load_state_dict(state, strict=False)
    return {"loaded": len(state), "missing_classifier": missing, "unused_classifier": unused}


def segmentation_episodes(args: SegmentationTrainingArguments, split: str, shots: int, episodes: int | None,
                          seed: int):
    """The episode dataset that ``args`` name (``split`` "train" or "test")."""
    mean, std = image_statistics(args)
    if args.dataset == "fashion_mnist_composites":
        from ..data.segmentation import FashionMNISTComposites

        return FashionMNISTComposites(split, fold=args.fold, shots=shots, episodes=episodes, image_size=args.image_size,
                                      seed=seed, data_dir=args.data_dir, mean=mean, std=std)
    from ..data.segmentation_folders import SEGMENTATION_FOLDER_DATASETS

    return SEGMENTATION_FOLDER_DATASETS[args.dataset](args.data_dir, split, fold=args.fold, shots=shots,
                                                      episodes=episodes, image_size=args.image_size, seed=seed,
                                                      split_dir=args.split_dir, mean=mean, std=std)


@torch.no_grad()
def evaluate_segmentation(model, args: SegmentationTrainingArguments, accelerator) -> list[dict]:
    """mIoU / FB-IoU of the fold's test classes for every shot count, episodes shared out over processes."""
    from ..metrics import FewShotSegmentationIoU

    net = accelerator.unwrap_model(model)
    net.eval()
    rows = []
    for shots in args.parsed_shots():
        episodes = segmentation_episodes(args, "test", shots, args.eval_episodes, args.seed + 1)
        mine = torch.utils.data.Subset(episodes, range(accelerator.process_index, len(episodes),
                                                       accelerator.num_processes))
        loader = torch.utils.data.DataLoader(mine, batch_size=args.eval_batch_size, num_workers=args.num_workers)
        meter = FewShotSegmentationIoU(episodes.classes)
        for batch in loader:
            with accelerator.autocast():
                out = net(query_pixel_values=batch["query_pixel_values"].to(accelerator.device, net.dtype),
                          support_pixel_values=batch["support_pixel_values"].to(accelerator.device, net.dtype),
                          support_masks=batch["support_masks"].to(accelerator.device))
            meter.update(out.predicted_mask, batch["labels"], batch["class_id"])
        if accelerator.num_processes > 1:
            meter.load_state(accelerator.reduce(meter.state().to(accelerator.device), reduction="sum"))
        res = meter.compute()
        rows.append({"shot": shots, "fold": args.fold, "classes": list(episodes.classes), "miou": res["miou"],
                     "fb_iou": res["fb_iou"], "per_class_iou": res["per_class_iou"], "episodes": res["episodes"]})
        accelerator.print(f"fold {args.fold} (unseen classes {episodes.classes}) {shots}-shot: mIoU "
                          f"{res['miou']:.2f}, FB-IoU {res['fb_iou']:.2f} over {res['episodes']} episodes")
    return rows


def write_hsnet_folder(folder: Path, model, args: SegmentationTrainingArguments, results: list[dict]) -> None:
    """The run's model folder (the caller's atomic folder): weights, config, image processor, remote code and a model
    card with the measured mIoU / FB-IoU and the exact arguments."""
    from huggingface_hub.repocard_data import EvalResult

    from ..cards import trained_card
    from ..models.hsnet_hub import HSNET_PAPER, write_hsnet_files

    write_hsnet_files(folder, model, args.image_size, *image_statistics(args))
    eval_results, table = [], ["## Results (unseen classes of the fold)", "",
                               "| dataset | fold | classes | shots | episodes | mIoU | FB-IoU |", "|---|---|---|---|---|---|---|"]
    for r in results:
        name = f"{args.dataset} fold {r['fold']} (unseen classes {r['classes']}) {r['shot']}-shot"
        eval_results += [EvalResult(task_type="image-segmentation", task_name="few-shot segmentation",
                                    dataset_type=args.dataset, dataset_name=name, metric_type=metric,
                                    metric_value=round(float(r[key]), 2),
                                    metric_name=f"{label} over {r['episodes']} episodes")
                         for metric, key, label in (("mean_iou", "miou", "mIoU"), ("fb_iou", "fb_iou", "FB-IoU"))]
        table.append(f"| {args.dataset} | {r['fold']} | {r['classes']} | {r['shot']} | {r['episodes']} | "
                     f"{r['miou']:.2f} | {r['fb_iou']:.2f} |")
    usage = ("import relzoo  # registers the architecture with transformers\n"
             "model = relzoo.AutoModelForFewShotSegmentation.from_pretrained(FOLDER_OR_REPO).eval()\n"
             "out = model(query_pixel_values=q, support_pixel_values=s, support_masks=m)   # (B,3,H,W), (B,K,3,H,W), (B,K,H,W)\n"
             "mask = out.predicted_mask")
    trained_card(folder / "README.md", model, model_id=f"hsnet-{args.backbone}-{args.dataset}",
                 tags=["few-shot", "segmentation", "relzoo", "hsnet", "timm"], dataset=args.dataset,
                 license="apache-2.0", metrics=["mean_iou"], eval_results=eval_results, usage=usage,
                 results_table=table if results else [], training=dataclasses.asdict(args),
                 script="scripts/finetune_hsnet.py", paper=HSNET_PAPER)


@torch.no_grad()
def write_pictures(model, args: SegmentationTrainingArguments, folder: Path) -> list[Path]:
    """PNG panels for the first ``args.pictures`` 1-shot test episodes: support with its mask (red), query,
    prediction, ground truth."""
    import numpy as np
    from PIL import Image

    episodes = segmentation_episodes(args, "test", 1, max(args.pictures, 1), args.seed + 1)
    model.eval()
    mean, std = episodes.mean, episodes.std
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.pictures):
        ep = episodes[i]
        out = model(query_pixel_values=ep["query_pixel_values"][None].to(model.device, model.dtype),
                    support_pixel_values=ep["support_pixel_values"][None].to(model.device, model.dtype),
                    support_masks=ep["support_masks"][None].to(model.device))
        support = (ep["support_pixel_values"][0] * std + mean).clamp(0, 1)
        support = torch.where(ep["support_masks"][0].bool(), 0.5 * support + 0.5 * torch.tensor([1.0, 0, 0])[:, None,
                                                                                                        None], support)
        query = (ep["query_pixel_values"] * std + mean).clamp(0, 1)
        pred = out.predicted_mask[0].cpu().float()[None].expand(3, -1, -1)
        truth = ep["labels"].float()[None].expand(3, -1, -1)
        gap = torch.ones(3, args.image_size, 4)
        panel = torch.cat([support, gap, query, gap, pred, gap, truth], dim=2)
        path = folder / f"episode{i:03d}_class{ep['class_id']}.png"
        Image.fromarray((panel.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def train_segmentation(args: SegmentationTrainingArguments) -> dict:
    """Fine-tune HSNet's learner on 1-shot episodes, evaluate, save; returns a summary (also ``results.json``)."""
    return run_training(args, _build_segmentation)


def _build_segmentation(args: SegmentationTrainingArguments, accelerator) -> TrainingPlan | dict:
    from ..models.hsnet import HSNetConfig, HSNetForFewShotSegmentation

    per_run = args.max_steps * args.batch_size * accelerator.num_processes  # built-in: one epoch = the whole run
    with argument_check(args, "dataset", "data_dir", "split_dir", "fold"):   # the data first: found before any model
        episodes = segmentation_episodes(args, "train", 1, per_run if args.dataset == "fashion_mnist_composites"
                                         else None, args.seed)
        for shots in args.parsed_shots():
            segmentation_episodes(args, "test", shots, args.eval_episodes, args.seed + 1)
    with argument_check(args, "backbone", "backbone_kwargs"):
        model = HSNetForFewShotSegmentation(HSNetConfig(backbone=args.backbone,
                                                        backbone_kwargs=args.parsed_backbone_kwargs(),
                                                        backbone_pretrained=args.backbone_pretrained,
                                                        image_size=args.image_size))   # what this run's episodes use
    with argument_check(args, "backbone_weights"):
        weights = load_backbone_weights(model, args.backbone_weights) if args.backbone_weights else None
    pretraining = pretrain_backbone(model, args) if args.pretrain_backbone_steps else None
    if pretraining is not None and pretraining.get("interrupted"):
        return {"model": "hsnet", "backbone": args.backbone, "backbone_pretraining": pretraining, **pretraining}
    train_dl = torch.utils.data.DataLoader(episodes, batch_size=args.batch_size, shuffle=False, drop_last=True,
                                           num_workers=args.num_workers)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # official: constant
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    run = run_identity(args, accelerator, NO_EFFECT_ON_WEIGHTS, image_mean_std=image_statistics(args))
    net = accelerator.unwrap_model(model)
    description = (f"HSNet on {args.backbone} (frozen{', weights ' + args.backbone_weights if weights else ''}): "
                   f"{sum(p.numel() for p in net.parameters() if p.requires_grad):,} trainable parameters | "
                   f"1-shot episodes, {args.batch_size} per step and process, fold {args.fold} | "
                   f"{accelerator.num_processes} process(es) | {args.max_steps} steps")

    def step(batch):
        with accelerator.autocast():
            return model(query_pixel_values=batch["query_pixel_values"],
                         support_pixel_values=batch["support_pixel_values"],
                         support_masks=batch["support_masks"], labels=batch["labels"]).loss

    def evaluate_run(summary: dict) -> None:
        summary["results"] = evaluate_segmentation(model, args, accelerator)
        summary["replicas_in_sync"] = replicas_in_sync(model, accelerator)

    def write(summary: dict, out_dir: Path) -> None:
        if args.pictures:
            summary["pictures"] = [str(p) for p in write_pictures(net, args, out_dir / "pictures")]
        if args.save_model:
            from ..fileio import atomic_folder

            with atomic_folder(out_dir / "model", overwrite=True) as tmp:
                write_hsnet_folder(tmp, net, args, summary["results"])
            summary["model_dir"] = str(out_dir / "model")

    return TrainingPlan(model=model, optimizer=optimizer, scheduler=scheduler, dataloader=train_dl,
                        total_steps=args.max_steps, run=run, step=step, evaluate=evaluate_run, write=write,
                        facts={"model": "hsnet", "backbone": args.backbone},
                        fit_facts=lambda: {"backbone_weights": weights, "backbone_pretraining": pretraining},
                        epoch_hooks=[episodes], description=description)
