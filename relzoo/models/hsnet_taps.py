"""Feature taps of a frozen timm backbone for HSNet: which intermediate maps feed the hypercorrelation.

A tap is a module name, read at the module's output, or ``"<name>:input"``, read at its input (HSNet's ResNet taps
are the bottleneck outputs after the residual add and *before* the block's final ReLU, i.e. the input of ``act3``).
Taps come in three pyramid levels, shallowest first (output strides 8, 16 and 32 for the usual backbones).

* :func:`builtin_taps` gives the official tap sets: ResNet-50 (4, 6, 3 taps: every bottleneck of layer2-4, pre-ReLU),
  ResNet-101 (4, 23, 3) and VGG-16 (conv4_1-3 and conv5_1-3 pre-ReLU, then pool5: 3, 3, 1).
* :func:`generic_taps` makes any other timm CNN usable: every block output of the stages at strides 8, 16 and 32,
  the strides measured with one forward pass on a blank image.
* :class:`FeatureTaps` records the taps during a forward pass (cloned, so in-place activations after a tap do not
  change it).
"""
from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["FeatureTaps", "builtin_taps", "generic_taps", "prune_after_taps", "resolve_taps"]

LEVEL_STRIDES = (8, 16, 32)


def _resnet_taps(blocks: tuple[int, int, int]) -> list[list[str]]:
    return [[f"layer{layer}.{i}.act3:input" for i in range(n)] for layer, n in zip((2, 3, 4), blocks)]


def builtin_taps(backbone: str) -> list[list[str]] | None:
    """The official HSNet taps for ``resnet50*``, ``resnet101*`` and ``vgg16`` (timm names; torchvision-style
    module layout), else ``None``."""
    name = backbone.split(".")[0]
    if re.fullmatch(r"resnet50[a-z]?", name):
        return _resnet_taps((4, 6, 3))
    if re.fullmatch(r"resnet101[a-z]?", name):
        return _resnet_taps((4, 23, 3))
    if name == "vgg16":
        return [[f"features.{i}" for i in (17, 19, 21)], [f"features.{i}" for i in (24, 26, 28)], ["features.30"]]
    return None


def _blocks_of(stage: nn.Module) -> list[tuple[str, nn.Module]]:
    inner = getattr(stage, "blocks", None)
    if isinstance(inner, (nn.Sequential, nn.ModuleList)) and len(inner):
        return [(f"blocks.{n}", m) for n, m in inner.named_children()]
    children = list(stage.named_children())
    if isinstance(stage, (nn.Sequential, nn.ModuleList)) and children or len(children) > 1:
        return children
    return [("", stage)]


def generic_taps(model: nn.Module, in_chans: int = 3, probe_size: int = 256) -> list[list[str]]:
    """Every block output of the stages whose output stride is 8, 16 or 32, grouped by measured stride.

    The stages are the model's ``feature_info`` modules and their siblings in between (a stage that is not a
    feature module, such as EfficientNet's ``blocks.3``, is included). Blocks are a stage's ``blocks`` children,
    else its children (RegNet's ``b1``, ``b2``, ...), else the stage itself."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no timm `feature_info`: name its taps in `feature_taps`")
    reductions = sorted({int(entry.get("reduction", 0)) for entry in info})
    if not set(LEVEL_STRIDES) <= set(reductions):
        raise ValueError(f"HSNet needs a CNN with feature maps at output strides {list(LEVEL_STRIDES)}; "
                         f"{type(model).__name__} has strides {reductions} (a ViT keeps one): choose a CNN backbone "
                         "or name its taps in `feature_taps`")
    modules = dict(model.named_modules())
    names = [entry["module"] for entry in info]
    parent = names[-1].rpartition(".")[0]
    container = modules[parent] if parent else model
    siblings = [n for n, _ in container.named_children()]
    local = [n.rpartition(".")[2] for n in names if n.rpartition(".")[0] == parent]
    if not local:
        raise ValueError(f"cannot find the stages of {type(model).__name__} from its feature_info {names}")
    stages = siblings[siblings.index(local[0]):siblings.index(local[-1]) + 1]   # strides measured below
    candidates = []
    for stage in stages:
        stage_name = f"{parent}.{stage}" if parent else stage
        for block_name, _ in _blocks_of(modules[stage_name]):
            candidates.append(f"{stage_name}.{block_name}" if block_name else stage_name)
    with FeatureTaps(model, candidates) as taps, torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            ref = next(model.parameters())
            probe = torch.zeros(1, in_chans, probe_size, probe_size, device=ref.device, dtype=ref.dtype)
            outputs = taps.run(probe)
        finally:
            model.train(was_training)
    levels: list[list[str]] = [[], [], []]
    for name, feature in zip(candidates, outputs):
        stride = round(probe_size / feature.shape[-1])
        if stride in LEVEL_STRIDES:
            levels[LEVEL_STRIDES.index(stride)].append(name)
    if not all(levels):
        raise ValueError(f"{type(model).__name__}: no block at output stride(s) "
                         f"{[s for s, lv in zip(LEVEL_STRIDES, levels) if not lv]}; name its taps in `feature_taps`")
    return levels


def resolve_taps(backbone: str, model: nn.Module, in_chans: int = 3) -> list[list[str]]:
    """The official taps when ``backbone`` has them, else :func:`generic_taps`."""
    return builtin_taps(backbone) or generic_taps(model, in_chans)


class FeatureTaps:
    """Forward hooks on ``model`` recording the named taps (``name`` or ``name:input``), in the order given.

    ``with FeatureTaps(model, names) as taps: features = taps.run(images)`` runs the model up to the last tap (the
    rest of the network is skipped) and returns one tensor per tap. Unknown names raise a ``ValueError`` naming
    them."""

    class _Stop(Exception):
        pass

    def __init__(self, model: nn.Module, names: list[str]):
        self.model, self.names = model, list(names)
        modules = dict(model.named_modules())
        parsed = [(n.removesuffix(":input"), n.endswith(":input")) for n in self.names]
        unknown = [n for n, (m, _) in zip(self.names, parsed) if m not in modules]
        if unknown:
            raise ValueError(f"feature taps {unknown} name no module of {type(model).__name__}")
        self._parsed = [(modules[m], is_input) for m, is_input in parsed]
        self._handles: list = []
        self._store: dict[int, torch.Tensor] = {}

    def __enter__(self) -> FeatureTaps:
        for index, (module, is_input) in enumerate(self._parsed):
            if is_input:
                hook = module.register_forward_pre_hook(self._make(index, read_input=True))
            else:
                hook = module.register_forward_hook(self._make(index, read_input=False))
            self._handles.append(hook)
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._handles:
            hook.remove()
        self._handles.clear()

    def _make(self, index: int, read_input: bool):
        def hook(module, args, output=None):
            value = args[0] if read_input else output
            self._store[index] = value.clone()  # a following in-place activation must not change the tap
            if len(self._store) == len(self._parsed):
                raise FeatureTaps._Stop

        if read_input:
            return lambda module, args: hook(module, args)
        return lambda module, args, output: hook(module, args, output)

    def run(self, images: torch.Tensor) -> list[torch.Tensor]:
        self._store = {}
        try:
            self.model(images)
        except FeatureTaps._Stop:
            pass
        missing = [self.names[i] for i in range(len(self.names)) if i not in self._store]
        if missing:
            raise RuntimeError(f"feature taps {missing} were not reached by the forward pass")
        out = [self._store[i] for i in range(len(self.names))]
        self._store = {}
        return out


def prune_after_taps(model: nn.Module, names: list[str], in_chans: int = 3) -> list[str]:
    """Replace the top-level children of ``model`` that a forward pass never reaches before its last tap (the
    classifier and, for VGG, the 120 M-parameter ``pre_logits``) by ``nn.Identity``; returns their names.

    Which children run is measured with one forward pass of a small blank image up to the last tap (it works on
    the meta device too), so the rule does not depend on the order in which a model declares its modules."""
    children = dict(model.named_children())
    reached: set[str] = set()
    hooks = [child.register_forward_pre_hook(lambda module, args, name=name: reached.add(name))
             for name, child in children.items()]
    try:
        ref = next(model.parameters())
        probe = torch.zeros(1, in_chans, 2 * LEVEL_STRIDES[-1], 2 * LEVEL_STRIDES[-1], device=ref.device,
                            dtype=ref.dtype)
        with FeatureTaps(model, names) as taps, torch.no_grad():
            taps.run(probe)
    finally:
        for hook in hooks:
            hook.remove()
    unused = [name for name in children if name not in reached]
    for name in unused:
        setattr(model, name, nn.Identity())
    return unused
