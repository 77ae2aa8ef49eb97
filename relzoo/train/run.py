"""The run skeleton every relzoo training task shares; a task supplies only what is its own.

:func:`run_training` validates the arguments, builds the accelerator, claims the output folder (one run owns it:
:mod:`relzoo.train.run_folder`), seeds, asks the task to build its :class:`TrainingPlan` (data, model, optimizer,
schedule, the run identity, its ``step`` / ``evaluate`` / ``write`` functions), trains it with
:class:`~relzoo.train.engine.TrainingEngine` (resume, checkpoints, divergence stops), evaluates, lets the main
process write the task's outputs (pictures, the model folder) and ``results.json``, and returns the summary.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .engine import TrainingEngine, make_accelerator, write_json_atomic
from .run_folder import claim_output_dir

__all__ = ["TrainingPlan", "run_training"]


@dataclass
class TrainingPlan:
    """What a task's ``build(args, accelerator)`` returns.

    ``model``, ``optimizer``, ``dataloader`` are prepared by the accelerator; ``scheduler`` is stepped once per step;
    ``run`` identifies the run (:func:`~relzoo.train.engine.run_identity`). ``step(batch) -> loss`` is the forward
    pass; ``evaluate(summary)`` runs on every process after training and fills ``summary``; ``write(summary,
    out_dir)`` runs on the main process after that (pictures, the model folder when ``args.save_model``).
    ``facts`` lead the summary; ``fit_facts()`` adds what the training itself counted. ``description`` is printed
    once before training."""
    model: object
    optimizer: object
    scheduler: object
    dataloader: object
    total_steps: int
    run: dict
    step: Callable
    evaluate: Callable
    write: Callable
    facts: dict = field(default_factory=dict)
    fit_facts: Callable[[], dict] | None = None
    epoch_hooks: Iterable = ()
    grad_transform: Callable | None = None
    description: str = ""


def run_training(args, build: Callable) -> dict:
    """Train the task whose ``build(args, accelerator)`` returns a :class:`TrainingPlan` (or a summary dict when the
    task finished early, e.g. an interrupted first stage); returns the summary, also in ``output_dir/results.json``
    (not written for a run stopped by ``stop_after_steps``)."""
    from accelerate.utils import set_seed

    args.validate()
    accelerator = make_accelerator(args.cpu, args.mixed_precision)
    with claim_output_dir(args.output_dir, accelerator, resume=args.resume, overwrite=args.overwrite):
        set_seed(args.seed)
        out_dir = Path(args.output_dir)
        plan = build(args, accelerator)
        if not isinstance(plan, TrainingPlan):
            return plan
        engine = TrainingEngine(accelerator, plan.model, plan.optimizer, plan.scheduler, plan.dataloader, out_dir,
                                plan.run, plan.total_steps, log_every=args.log_every,
                                checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                                stop_after_steps=args.stop_after_steps, epoch_hooks=plan.epoch_hooks,
                                grad_transform=plan.grad_transform)
        if args.resume:
            engine.resume()
        if plan.description:
            accelerator.print(plan.description)
        summary = {**plan.facts, **engine.fit(plan.step)}
        if plan.fit_facts is not None:
            summary.update(plan.fit_facts())
        summary["arguments"] = dataclasses.asdict(args)   # the exact command, for the model card of a published run
        if summary.get("interrupted"):
            return summary
        plan.evaluate(summary)
        if accelerator.is_main_process:
            plan.write(summary, out_dir)
            write_json_atomic(out_dir / "results.json", summary)
        accelerator.wait_for_everyone()
        return summary
