"""relzoo: relation-modelling vision methods as timm models and transformers models.

``import relzoo`` registers every family with timm (``timm.create_model("san10_patch")``) and with the
transformers Auto classes (``AutoModel.from_pretrained(folder)``).
"""
from .models import (
                     SAN,
                     SAN_VARIANTS,
                     SANConfig,
                     SANForImageClassification,
                     SANModel,
                     SANPreTrainedModel,
                     san_image_processor,
)

__version__ = "0.1.0"
__all__ = ["SAN", "SAN_VARIANTS", "SANConfig", "SANForImageClassification", "SANModel", "SANPreTrainedModel",
           "san_image_processor", "__version__"]
