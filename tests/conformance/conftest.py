"""Conformance suites: the markers timm's test_models.py and transformers' test_modeling_common.py use
(registered so that they are not unknown marks)."""

UPSTREAM_MARKERS = ("base", "forward", "backward", "cfg", "cfg_nonstd", "torchscript", "features", "fxforward",
                    "fxbackward", "accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
                    "torch_compile_test")


def pytest_configure(config):
    for name in UPSTREAM_MARKERS:
        config.addinivalue_line("markers", f"{name}: a test group of the upstream suites")
