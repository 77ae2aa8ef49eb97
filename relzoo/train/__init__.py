"""Accelerate training loops called by ``scripts/``."""
from .classification import ClassifierTrainingArguments, evaluate, smoothed_cross_entropy, train_classifier

__all__ = ["ClassifierTrainingArguments", "evaluate", "smoothed_cross_entropy", "train_classifier"]
