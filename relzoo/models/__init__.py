"""Model families. Importing this package registers every family with timm and the transformers Auto classes."""
from . import apinet, batchformer, crosstransformer, hsnet, san  # noqa: F401  (family list: add one import per family)
from .apinet import APINetConfig, APINetForImageClassification, add_apinet, apinet_training_loss, remove_apinet
from .batchformer import (
                          BatchFormerConfig,
                          BatchFormerForImageClassification,
                          add_batchformer,
                          batchformer_targets,
                          remove_batchformer,
)
from .crosstransformer import (
                      AutoModelForFewShotClassification,
                      CrossTransformerConfig,
                      CrossTransformerForFewShotClassification,
                      FewShotClassifierOutput,
                      ProtoNetConfig,
                      ProtoNetForFewShotClassification,
)
from .hsnet import (
                    AutoModelForFewShotSegmentation,
                    FewShotSegmentationOutput,
                    HSNetConfig,
                    HSNetForFewShotSegmentation,
)
from .san import (
                  SAN,
                  SAN_ARCHITECTURES,
                  SAN_VARIANTS,
                  SANConfig,
                  SANForImageClassification,
                  SANModel,
                  SANPreTrainedModel,
                  san_image_processor,
)

__all__ = ["APINetConfig", "APINetForImageClassification", "add_apinet", "apinet_training_loss", "remove_apinet",
           "BatchFormerConfig", "BatchFormerForImageClassification", "add_batchformer", "batchformer_targets",
           "remove_batchformer",
           "SAN", "SAN_ARCHITECTURES", "SAN_VARIANTS", "AutoModelForFewShotClassification",
           "AutoModelForFewShotSegmentation",
           "FewShotSegmentationOutput", "HSNetConfig", "HSNetForFewShotSegmentation", "CrossTransformerConfig",
           "CrossTransformerForFewShotClassification", "FewShotClassifierOutput", "ProtoNetConfig",
           "ProtoNetForFewShotClassification", "SANConfig", "SANForImageClassification", "SANModel",
           "SANPreTrainedModel", "san_image_processor"]
