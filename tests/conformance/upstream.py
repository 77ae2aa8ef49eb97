"""Load timm's and transformers' own test suites (fetched by ``fetch_upstream.py``) for relzoo's models.

Nothing of those suites lives in this repository: they are extracted from the source distributions of the
installed versions into ``$RELZOO_UPSTREAM_DIR`` (default: ``<virtualenv>/upstream``) at install time, and
imported from there. This module only decides *which models* the upstream tests see and supplies the three small
modules that transformers' sdist leaves out.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from importlib.metadata import version
from pathlib import Path

import timm
import timm.models._registry as timm_registry

import relzoo  # noqa: F401  (registers every family with timm and transformers)


def suite_dir(package: str) -> Path:
    """``<upstream>/<package>-<installed version>/tests``; a clear error when it was never fetched."""
    root = Path(os.environ.get("RELZOO_UPSTREAM_DIR", Path(sys.prefix) / "upstream"))
    path = root / f"{package}-{version(package)}" / "tests"
    if not (path / "__init__.py").is_file() and not any(path.glob("test_*.py")):
        raise RuntimeError(
            f"{package} {version(package)}'s own test suite is not at {path}. Fetch it once (it needs the package "
            f"index, the tests do not): `python tests/conformance/fetch_upstream.py` (`make install` runs it), or "
            f"set RELZOO_UPSTREAM_DIR to the folder that holds {package}-{version(package)}/tests.")
    return path


# ----------------------------------------------------------------------------------------------------------------
# timm: tests/test_models.py over relzoo's registered architectures
# ----------------------------------------------------------------------------------------------------------------
def relzoo_timm_models() -> list[str]:
    """Architectures registered with timm by relzoo (their entry points live in ``relzoo.*``)."""
    return sorted(name for name, fn in timm_registry._model_entrypoints.items()
                  if fn.__module__.split(".")[0] == "relzoo")


class RelzooModels(list):
    """A ``list_models`` answer restricted to relzoo: marks a test as one that runs over "every model"."""


def _has_forward_intermediates(name: str) -> bool:
    model = timm.create_model(name, device="meta")
    return callable(getattr(model, "forward_intermediates", None))


def _restricted_listing(real_list_models, real_list_pretrained, ours: set[str]):
    """``list_models`` / ``list_pretrained`` that answer as timm would, but only with the architectures ``ours``.

    ``module=`` names timm's own families (test_models.py passes the families that implement
    ``forward_intermediates``); for relzoo it selects the architectures that implement it.
    """

    def list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False,
                    include_tags=None):
        names = real_list_models(filter=filter, pretrained=pretrained, exclude_filters=exclude_filters,
                                 name_matches_cfg=name_matches_cfg, include_tags=include_tags)
        names = [n for n in names if n.split(".")[0] in ours]
        if module:
            names = [n for n in names if _has_forward_intermediates(n.split(".")[0])]
        return RelzooModels(names)

    def list_pretrained(filter="", exclude_filters=""):
        return RelzooModels(n for n in real_list_pretrained(filter=filter, exclude_filters=exclude_filters)
                            if n.split(".")[0] in ours)

    return list_models, list_pretrained


def _import_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_timm_model_tests(not_applicable: dict[str, str], models: list[str] | None = None,
                          not_applicable_cases: dict[tuple[str, str], str] | None = None,
                          module_name: str = "timm_upstream_test_models") -> dict:
    """timm's ``tests/test_models.py`` imported with ``list_models``/``list_pretrained`` answering only ``models``
    (default: every relzoo architecture). Returns the namespace to expose to pytest: every test parametrised over "every model" (the
    ones that name timm models explicitly test timm's own code and are left out) and the fixtures they use.

    A generic test that selects no relzoo model must be explained in ``not_applicable`` (test name -> reason);
    it is then collected as a skipped test with that reason. An explanation for a test that does select relzoo
    models is an error: it would hide a test that applies. ``not_applicable_cases`` skips one model in one test
    ``{(test name, model): reason}``; an entry that names no selected case is an error too.
    """
    real = timm.list_models, timm.list_pretrained
    ours = set(models if models is not None else relzoo_timm_models())
    timm.list_models, timm.list_pretrained = _restricted_listing(*real, ours)
    try:
        suite = _import_file(module_name, suite_dir("timm") / "test_models.py")
    finally:
        timm.list_models, timm.list_pretrained = real
    import pytest

    cases = dict(not_applicable_cases or {})
    exposed: dict = {}
    for name, obj in vars(suite).items():
        if hasattr(obj, "_fixture_function_marker") or type(obj).__name__ == "FixtureFunctionDefinition":
            exposed[name] = obj
            continue
        if not (name.startswith("test_") and callable(obj)):
            continue
        lists = [m.args[1] for m in getattr(obj, "pytestmark", []) if m.name == "parametrize"
                 and isinstance(m.args[1], RelzooModels)]
        if not lists:
            continue  # a test of timm's own models (hard-coded names), not a contract over every model
        if any(lists):
            if name in not_applicable:
                raise RuntimeError(f"timm's {name} runs on relzoo models {sorted(set().union(*lists))}; "
                                   "remove its entry from the harness's not-applicable list")
            exposed[name] = obj
            for selected in lists:
                for i, model in enumerate(selected):
                    reason = cases.pop((name, model), None)
                    if reason is not None:
                        selected[i] = pytest.param(model, marks=pytest.mark.skip(reason=reason), id=model)
        else:
            if name not in not_applicable:
                raise RuntimeError(f"timm's {name} selects no relzoo model: say why in the harness's not-applicable "
                                   "list, or make the models qualify")
            exposed[name] = pytest.mark.skip(reason=not_applicable[name])(_placeholder(name))
    missing = set(not_applicable) - set(exposed)
    if missing:
        raise RuntimeError(f"not-applicable entries name no test of timm {version('timm')}: {sorted(missing)}")
    if cases:
        raise RuntimeError(f"not-applicable cases select nothing in timm {version('timm')}'s suite: {sorted(cases)}")
    return exposed


def _placeholder(name: str):
    def test():  # replaced by a skip mark; stands in for an upstream test that selects no relzoo model
        raise AssertionError("unreachable")

    test.__name__ = test.__qualname__ = name
    return test


# ----------------------------------------------------------------------------------------------------------------
# transformers: ModelTesterMixin and ConfigTester from tests/test_modeling_common.py / test_configuration_common.py
# ----------------------------------------------------------------------------------------------------------------
TRANSFORMERS_PACKAGE = "transformers_upstream_tests"
#: modules that ``test_modeling_common.py`` imports but transformers' source distribution does not ship. When one is
#: missing the harness supplies it (see :func:`_supply_missing_modules`); the README lists what that leaves out.
SUPPLIED_MODULES: list[str] = []


def common_config_kwargs() -> dict:
    """Every attribute of a bare ``PreTrainedConfig`` with a non-default value (what the upstream
    ``config_common_kwargs`` holds: ``ConfigTester.check_config_arguments_init`` checks that a config class passes
    them all through). Built from the installed base class, so a new common attribute fails here, loudly."""
    from transformers import PreTrainedConfig

    values = {"return_dict": False, "output_hidden_states": True, "output_attentions": True, "dtype": "float16",
              "chunk_size_feed_forward": 5, "architectures": ["RelzooTestModel"], "id2label": {0: "label"},
              "label2id": {"label": "0"}, "problem_type": "regression"}
    base = PreTrainedConfig()
    skip = {"transformers_version", "is_encoder_decoder", "_name_or_path", "_post_init_done"}
    public = {k.lstrip("_") for k in vars(base) if k not in skip and not k.endswith("_internal")}
    unknown = public - set(values)
    if unknown:
        raise RuntimeError(f"transformers {version('transformers')} has common config attributes the harness does not "
                           f"know: {sorted(unknown)}; give each a non-default value in common_config_kwargs()")
    same = [k for k, v in values.items() if getattr(base, k) == v]
    if same:
        raise RuntimeError(f"common_config_kwargs() gives default values for {same}")
    return values


def _supply_missing_modules(root: Path) -> None:
    def supply(dotted: str, **attrs) -> None:
        if (root / (dotted.replace(".", "/") + ".py")).is_file():
            return  # shipped: use the real one
        parent = TRANSFORMERS_PACKAGE
        for part in dotted.split(".")[:-1]:
            parent = f"{parent}.{part}"
            sys.modules.setdefault(parent, types.ModuleType(parent)).__path__ = []
        module = types.ModuleType(f"{TRANSFORMERS_PACKAGE}.{dotted}")
        module.__dict__.update(attrs)
        sys.modules[module.__name__] = module
        SUPPLIED_MODULES.append(dotted)

    # test_modeling_common: `class ModelTesterMixin(ExportTesterMixin)`; the export tests themselves are not shipped,
    # so the mixin is empty and relzoo tests torch.export itself (tests/test_san_models.py).
    supply("exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
    # only used in `issubclass(self.__class__, GenerationTesterMixin)`: relzoo models do not generate.
    supply("generation.test_utils", GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
    supply("utils.test_configuration_utils", config_common_kwargs=common_config_kwargs())


def _show_relzoo_in_task_tables(module: types.ModuleType) -> None:
    """Give ``module`` copies of transformers' ``*_MAPPING_NAMES`` tables that also hold relzoo's models.

    The upstream tests find a model's task (which inputs and labels it takes, whether it is a base model without a
    loss) in these static tables of built-in architectures; relzoo registers its models with the Auto classes at run
    time, which fills the Auto mappings but not those tables. The copies list every relzoo class registered with an
    Auto mapping under its config's ``model_type``, as if it were built in; transformers' own tables are untouched.
    """
    from transformers.models.auto import modeling_auto

    lazy = [m for m in vars(modeling_auto).values() if type(m).__name__ == "_LazyAutoMapping"]
    for name, table in list(vars(module).items()):
        if not (name.endswith("_MAPPING_NAMES") and isinstance(table, dict)):
            continue
        extra = {config.model_type: model.__name__ for mapping in lazy if mapping._model_mapping is table
                 for config, model in mapping._extra_content.items() if model.__module__.startswith("relzoo.")}
        if extra:
            setattr(module, name, type(table)({**table, **extra}))


def load_transformers_common() -> types.SimpleNamespace:
    """``ModelTesterMixin``, ``ConfigTester``, ``floats_tensor``, ``ids_tensor`` from the installed transformers'
    own ``tests/`` (imported as the package ``transformers_upstream_tests``)."""
    if TRANSFORMERS_PACKAGE not in sys.modules:
        root = suite_dir("transformers")
        package = types.ModuleType(TRANSFORMERS_PACKAGE)
        package.__path__ = [str(root)]
        sys.modules[TRANSFORMERS_PACKAGE] = package
        _supply_missing_modules(root)
    modeling = importlib.import_module(f"{TRANSFORMERS_PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{TRANSFORMERS_PACKAGE}.test_configuration_common")
    _show_relzoo_in_task_tables(modeling)
    return types.SimpleNamespace(ModelTesterMixin=modeling.ModelTesterMixin, ConfigTester=configuration.ConfigTester,
                                 floats_tensor=modeling.floats_tensor, ids_tensor=modeling.ids_tensor)
