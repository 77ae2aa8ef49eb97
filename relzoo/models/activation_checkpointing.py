"""Activation checkpointing that leaves BatchNorm statistics exactly as training without it would.

A checkpointed module runs its forward twice in a training step: once in the forward pass and again in the
backward pass to rebuild the activations. BatchNorm in training mode updates its running statistics on every
call, so the recomputation would count each batch twice (``num_batches_tracked`` 2 instead of 1, running means
moved twice). The recomputation normalises with the same batch statistics, so only those buffer updates differ:
:func:`recompute_keeps_batchnorm_stats` makes them no-ops in the recomputation. It works with reentrant and
non-reentrant ``torch.utils.checkpoint`` alike (and with the non-reentrant early stop): the first call of the
wrapped function is the forward pass, every later call a recomputation.
"""
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def recompute_keeps_batchnorm_stats(function: Callable, module: nn.Module) -> Callable:
    """``function`` for ``torch.utils.checkpoint``: calls after the first (recomputations) leave the running
    statistics of every BatchNorm in ``module`` as they found them.

    During a recomputation each BatchNorm runs with momentum 0, so its own update rewrites the running statistics
    with their current values (``1 * running + 0 * batch``, exact), and ``num_batches_tracked`` is put back after.
    The running statistics are never written from outside: autograd may have saved them, and rewriting them after
    the recomputation would invalidate the backward pass.
    """
    calls = 0

    def run(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            return function(*args, **kwargs)
        norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                 for m in norms]
        for m in norms:
            m.momentum = 0.0
        try:
            return function(*args, **kwargs)
        finally:
            with torch.no_grad():
                for m, momentum, tracked in saved:
                    m.momentum = momentum
                    if tracked is not None:
                        m.num_batches_tracked.copy_(tracked)

    return run


def batchnorm_safe_checkpoint_func(checkpoint_func: Callable, module: nn.Module) -> Callable:
    """Wrap a transformers ``gradient_checkpointing_func`` (``checkpoint_func(function, *args, **kwargs)``) so that
    each checkpointed call keeps the BatchNorm statistics of ``module`` (see :func:`recompute_keeps_batchnorm_stats`)."""

    def func(function, *args, **kwargs):
        return checkpoint_func(recompute_keeps_batchnorm_stats(function, module), *args, **kwargs)

    return func


def checkpoint_modules(modules: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run ``modules`` one after the other, each under non-reentrant activation checkpointing that keeps its
    BatchNorm statistics (what timm's ``set_grad_checkpointing`` does for a sequence of blocks)."""
    for module in modules:
        x = checkpoint(recompute_keeps_batchnorm_stats(module, module), x, use_reentrant=False)
    return x
