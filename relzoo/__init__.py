"""relzoo: relation-modelling vision methods as timm models and transformers models.

``import relzoo`` registers every family with timm (``timm.create_model("san10_patch")``) and with the
transformers Auto classes (``AutoModel.from_pretrained(folder)``). Public model classes are re-exported here.
The relation operators (``relzoo.layers``) are plain torch: they import without timm or transformers installed,
and then the rest of relzoo says what is missing when it is used.
"""
__version__ = "0.1.0"

try:
    from . import models
    from .models import *  # noqa: F403  (the family list lives in relzoo/models/__init__.py)
    from .variants import list_models
except ModuleNotFoundError as _err:
    if (_err.name or "").split(".")[0] not in ("timm", "transformers", "huggingface_hub", "safetensors", "accelerate"):
        raise
    _MISSING = _err.name.split(".")[0]
    __all__ = ["__version__"]

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"relzoo.{name} needs {_MISSING!r}, which is not installed (pip install relzoo installs "
                          "it); only relzoo.layers works without it")
else:
    __all__ = [*models.__all__, "list_models", "__version__"]
