"""timm's own ``tests/test_models.py`` (from the installed timm's source distribution) over every relzoo
architecture registered with timm.

Every upstream test parametrised over "every model" runs here on relzoo's architectures, unchanged. Tests that
select no relzoo model are listed below with the reason; the README repeats the list.
"""
from upstream import load_timm_model_tests

NOT_APPLICABLE = {
    "test_model_inference": "needs pretrained weights and timm's reference tensors on the Hub; relzoo publishes no "
                            "weights yet (timm.list_pretrained() holds no relzoo model)",
    "test_model_load_pretrained": "no relzoo model has published pretrained weights yet",
    "test_model_features_pretrained": "no relzoo model has published pretrained weights yet",
    "test_model_default_cfgs_non_std": "for transformer/hybrid models (timm's NON_STD_FILTERS); relzoo's timm "
                                       "architectures are standard NCHW CNN-style backbones and run "
                                       "test_model_default_cfgs instead",
    "test_model_features_space2depth_reduction": "checks timm's own efficientnet_h/x space-to-depth stems (it lists "
                                                 "models by the name filter 'efficientnet_[hx]_*')",
}

globals().update(load_timm_model_tests(NOT_APPLICABLE))
