"""transformers' own ``ModelTesterMixin`` and ``ConfigTester`` over the few-shot classifiers, with a tester that builds
tiny episodes (3-way, uneven shots, queries of another size than the support) on a tiny timm backbone.

The common inputs are one whole episode, so tests that cut the inputs into batches of one are skipped with a reason
below (an episode cut in two is another episode); everything else that applies runs.
"""
import unittest

import torch
from upstream import load_transformers_common

from relzoo import (
    CrossTransformerConfig,
    CrossTransformerForFewShotClassification,
    ProtoNetConfig,
    ProtoNetForFewShotClassification,
)

common = load_transformers_common()
EPISODE_ONLY = "its inputs are one episode (support set + queries + labels): cutting them into single samples " \
               "makes other episodes, not a smaller batch"


class FewShotModelTester:
    """Tiny episodes: 3 classes with 1, 2 and 3 shots at 32 px, 4 queries at 40 px; `test_resnet` at stride 8."""

    def __init__(self, parent, config_class, num_queries=4, image_size=32, query_size=40, is_training=True):
        self.parent, self.config_class, self.num_queries = parent, config_class, num_queries
        self.image_size, self.query_size, self.is_training = image_size, query_size, is_training
        self.support_labels = torch.tensor([0, 1, 1, 2, 2, 2])
        self.num_classes = 3

    def get_config(self):
        extra = dict(key_dim=16, value_dim=8, chunk_size=2) if self.config_class is CrossTransformerConfig else {}
        return self.config_class(backbone="test_resnet", backbone_kwargs={"output_stride": 8}, **extra)

    def prepare_config_and_inputs(self):
        support = common.floats_tensor([len(self.support_labels), 3, self.image_size, self.image_size])
        query = common.floats_tensor([self.num_queries, 3, self.query_size, self.query_size])
        query_labels = common.ids_tensor([self.num_queries], self.num_classes)
        return self.get_config(), query, support, self.support_labels.clone(), query_labels

    def prepare_config_and_inputs_for_common(self):
        config, query, support, labels, _ = self.prepare_config_and_inputs()
        return config, {"query_pixel_values": query, "support_pixel_values": support, "support_labels": labels}

    def create_and_check_model(self, model_class, config, query, support, labels, query_labels):
        model = model_class(config).eval()
        with torch.no_grad():
            out = model(query, support, labels, query_labels)
        self.parent.assertEqual(out.logits.shape, (self.num_queries, self.num_classes))
        self.parent.assertEqual(out.loss.shape, ())


class _FewShotContract(common.ModelTesterMixin):
    config_class = None
    has_attentions = False  # the mixin's attention tests expect per-layer (batch, heads, seq, seq) maps
    test_resize_embeddings = False
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = FewShotModelTester(self, self.config_class)
        self.config_tester = common.ConfigTester(self, config_class=self.config_class, has_text_modality=False,
                                                 common_properties=["backbone", "num_channels", "query_bn_stats"])

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        config, *inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_model(self.all_model_classes[0], config, *inputs)

    @unittest.skip(reason="checks token embeddings (nn.Embedding); the backbone embeds pixels with a convolution")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(reason=EPISODE_ONLY)
    def test_batching_equivalence(self):
        pass

    def test_hidden_states_output(self):
        """One hidden state per episode side: the backbone's final map (the mixin expects one per layer)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = self.all_model_classes[0](config).eval()
        for via_config in (False, True):
            config.output_hidden_states = via_config
            with torch.no_grad():
                out = model(**inputs, **({} if via_config else {"output_hidden_states": True}))
            self.assertEqual([tuple(t.shape) for t in out.hidden_states], [(4, 96, 5, 5)])
            self.assertEqual([tuple(t.shape) for t in out.support_hidden_states], [(6, 96, 4, 4)])


class CrossTransformerContractTest(_FewShotContract, unittest.TestCase):
    """transformers' model contract for CrossTransformerForFewShotClassification."""

    config_class = CrossTransformerConfig
    all_model_classes = (CrossTransformerForFewShotClassification,)


class ProtoNetContractTest(_FewShotContract, unittest.TestCase):
    """transformers' model contract for ProtoNetForFewShotClassification."""

    config_class = ProtoNetConfig
    all_model_classes = (ProtoNetForFewShotClassification,)
