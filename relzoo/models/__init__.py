"""Model families. Importing this package registers every family with timm and the transformers Auto classes."""
from . import san  # noqa: F401  (family list: add one import per family)
from .san import (
                  SAN,
                  SAN_VARIANTS,
                  SANConfig,
                  SANForImageClassification,
                  SANModel,
                  SANPreTrainedModel,
                  san_image_processor,
)

__all__ = ["SAN", "SAN_VARIANTS", "SANConfig", "SANForImageClassification", "SANModel", "SANPreTrainedModel",
           "san_image_processor"]
