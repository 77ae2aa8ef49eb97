"""Accelerate training loops called by ``scripts/``: one engine (:mod:`relzoo.train.engine`), one task per module."""
from .classification import ClassifierTrainingArguments, evaluate, smoothed_cross_entropy, train_classifier
from .engine import TrainingEngine, make_accelerator, replicas_in_sync
from .fewshot import FewShotTrainingArguments, evaluate_episodes, train_fewshot

__all__ = ["ClassifierTrainingArguments", "FewShotTrainingArguments", "TrainingEngine", "evaluate",
           "evaluate_episodes", "make_accelerator", "replicas_in_sync", "smoothed_cross_entropy", "train_classifier",
           "train_fewshot"]
