"""Relation operators: plain torch, importable without timm or transformers."""
from .crosstransformer import (
    CrossAttentionHead,
    cross_attention_logits,
    cross_attention_logits_reference,
    cross_attention_weights,
    prototype_logits,
    prototype_logits_reference,
)
from .san import (
                  PAIRWISE_RELATIONS,
                  PATCHWISE_RELATIONS,
                  Conv1x1,
                  SelfAttention2d,
                  aggregation,
                  aggregation_reference,
                  conv1x1,
                  set_fused_inference,
                  subtraction,
                  subtraction2,
                  subtraction2_reference,
                  subtraction_reference,
                  unfold_footprint,
)

__all__ = ["CrossAttentionHead", "cross_attention_logits", "cross_attention_logits_reference",
           "cross_attention_weights", "prototype_logits", "prototype_logits_reference", "PAIRWISE_RELATIONS", "PATCHWISE_RELATIONS", "Conv1x1", "SelfAttention2d", "aggregation",
           "aggregation_reference", "conv1x1", "set_fused_inference", "subtraction", "subtraction2",
           "subtraction2_reference", "subtraction_reference", "unfold_footprint"]
