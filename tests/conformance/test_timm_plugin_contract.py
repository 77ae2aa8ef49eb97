"""timm's own ``tests/test_models.py`` over timm models that carry a training-only plug-in added in one call
(``relzoo.add_batchformer`` / ``relzoo.add_apinet``): V1 on timm's ``test_resnet``, V2 after a block of timm's
``test_vit``, API-Net on ``test_resnet``. They are registered with timm here, for the tests only (relzoo itself
registers no plugged architecture): each entry point is ``timm.create_model(base, **kwargs)`` plus one call. Their
names start with the base's so that timm's name filters class them as it classes the base (``test_vit*`` is a
"non-standard" transformer for the cfg tests).

What does not apply is listed below with the reason; the README repeats it.
"""
import timm
from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model
from upstream import load_timm_model_tests

from relzoo import add_apinet, add_batchformer

PLUGGED = {"test_resnet_relzoo_batchformer": ("test_resnet", dict(version=1)),
           "test_vit_relzoo_batchformer_v2": ("test_vit", dict(version=2, after=["blocks.0"])),
           "test_resnet_relzoo_apinet": ("test_resnet", None)}


def _cfg(base: str) -> dict:
    cfg = get_pretrained_cfg(base).to_dict()
    for key in ("hf_hub_id", "hf_hub_filename", "url", "file", "state_dict", "tag"):
        cfg.pop(key, None)                     # no weights: nothing claims a download
    return cfg


default_cfgs = generate_default_cfgs({name: _cfg(base) for name, (base, _) in PLUGGED.items()})


def _create(name: str, pretrained: bool, kwargs: dict):
    base, plugin = PLUGGED[name]
    model = timm.create_model(base, pretrained=pretrained, **kwargs)
    return add_apinet(model) if plugin is None else add_batchformer(model, **plugin)


def _register(name: str) -> None:
    """One timm entry point per plugged model (kept out of this module's names: pytest would collect them)."""
    def entrypoint(pretrained=False, **kwargs):
        return _create(name, pretrained, kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__           # timm finds default_cfgs in this module
    register_model(entrypoint)


for _name in PLUGGED:
    _register(_name)


NOT_APPLICABLE = {
    "test_model_inference": "needs pretrained weights and timm's reference tensors on the Hub",
    "test_model_load_pretrained": "the plugged test models have no pretrained weights",
    "test_model_features_pretrained": "the plugged test models have no pretrained weights",
    "test_model_features_space2depth_reduction": "checks timm's own efficientnet_h/x space-to-depth stems",
}

V1, V2, API = PLUGGED
UNUSED = ("API-Net's parameters take part only in its pair loss (relzoo.apinet_training_loss), never in the "
          "network's forward, so a backward from the forward's output leaves them without gradients by design; "
          "tests/test_apinet_model.py checks their gradients through the pair loss")
HOOKS_JIT = ("the plug-in acts through Python forward hooks, which TorchScript cannot compile; the inference network "
             "(relzoo.remove_batchformer(model)) is bit-identical in evaluation and scripts like the base model")
FEATURES = ("features_only=True returns timm's feature wrapper, which has no classifier or pooled features for V1 / "
            "API-Net to attach to (add_* name the missing piece); forward_intermediates on the plugged model passes")
FEATURES_V2 = ("features_only=True returns timm's feature wrapper, whose module names ('model.blocks.0') are not the "
               "network's, so add_batchformer(after=['blocks.0']) names the missing module; forward_intermediates on "
               "the plugged model passes")
PRUNED = ("prune_intermediate_layers(prune_head=True) removes the head, so the plug-in that sits at the head takes "
          "no part; the test then reports its parameters as unused")
FX_HOOKS = ("torch.fx traces leaf modules without their forward hooks, so the traced graph is the plain network and "
            "the training-only BatchFormer never runs (its parameters get no gradient); the eager model trains it")
FX_V2 = ("V2's insertion hook branches on the batch (training: the two streams), which symbolic tracing cannot "
         "follow; the eager model and forward_intermediates pass")
NOT_APPLICABLE_CASES = {
    ("test_model_backward", API): UNUSED, ("test_model_backward_fx", API): UNUSED,
    ("test_model_forward_torchscript", V1): HOOKS_JIT, ("test_model_forward_torchscript", V2): HOOKS_JIT,
    ("test_model_forward_fx_torchscript", V1): HOOKS_JIT, ("test_model_forward_fx_torchscript", V2): HOOKS_JIT,
    ("test_model_forward_features", V1): FEATURES, ("test_model_forward_features", API): FEATURES,
    ("test_model_forward_intermediates_features", V1): FEATURES,
    ("test_model_forward_intermediates_features", API): FEATURES,
    ("test_model_forward_intermediates_features", V2): FEATURES_V2,
    ("test_prune_intermediate_layers_contract", V1): PRUNED, ("test_prune_intermediate_layers_contract", API): PRUNED,
    ("test_model_backward_fx", V1): FX_HOOKS, ("test_model_backward_fx", V2): FX_V2, ("test_model_forward_fx", V2): FX_V2,
}

globals().update(load_timm_model_tests(NOT_APPLICABLE, models=list(PLUGGED), not_applicable_cases=NOT_APPLICABLE_CASES,
                                       module_name="timm_upstream_plugged"))
