"""The former name of :mod:`relzoo.models.crosstransformer` (CrossTransformers and ProtoNet), kept so that imports
written against it keep working."""
from . import crosstransformer as _crosstransformer


def __getattr__(name: str):
    return getattr(_crosstransformer, name)
