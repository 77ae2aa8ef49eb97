"""relzoo: relation-modelling vision methods as timm models and transformers models.

``import relzoo`` registers every family with timm (``timm.create_model("san10_patch")``) and with the
transformers Auto classes (``AutoModel.from_pretrained(folder)``). Public model classes are re-exported here.
"""
from . import models
from .models import *  # noqa: F403  (the family list lives in relzoo/models/__init__.py)
from .variants import list_models

__version__ = "0.1.0"
__all__ = [*models.__all__, "list_models", "__version__"]
