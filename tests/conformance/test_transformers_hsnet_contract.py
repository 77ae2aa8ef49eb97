"""transformers' own ``ModelTesterMixin`` and ``ConfigTester`` over HSNetForFewShotSegmentation, with a tester that
builds tiny episodes (batch of 2 episodes, 2 shots, 64 x 80 queries, 64 x 64 supports) on a tiny timm backbone."""
import unittest

import torch
from upstream import load_transformers_common

from relzoo import HSNetConfig, HSNetForFewShotSegmentation

common = load_transformers_common()


class HSNetModelTester:
    def __init__(self, parent, batch_size=2, shots=2, query_size=(64, 80), support_size=64, is_training=True):
        self.parent, self.batch_size, self.shots = parent, batch_size, shots
        self.query_size, self.support_size, self.is_training = query_size, support_size, is_training

    def get_config(self):
        return HSNetConfig(backbone="test_resnet")

    def prepare_config_and_inputs(self):
        b, k, s = self.batch_size, self.shots, self.support_size
        query = common.floats_tensor([b, 3, *self.query_size])
        support = common.floats_tensor([b, k, 3, s, s])
        masks = common.ids_tensor([b, k, s, s], 2)
        labels = common.ids_tensor([b, *self.query_size], 2)
        return self.get_config(), query, support, masks, labels

    def prepare_config_and_inputs_for_common(self):
        config, query, support, masks, _ = self.prepare_config_and_inputs()
        return config, {"query_pixel_values": query, "support_pixel_values": support, "support_masks": masks}

    def create_and_check_model(self, config, query, support, masks, labels):
        model = HSNetForFewShotSegmentation(config).eval()
        with torch.no_grad():
            out = model(query, support, masks, labels)
        self.parent.assertEqual(out.logits.shape, (self.batch_size, 2, *self.query_size))
        self.parent.assertEqual(out.predicted_mask.shape, (self.batch_size, *self.query_size))
        self.parent.assertEqual(out.loss.shape, ())


class HSNetContractTest(common.ModelTesterMixin, unittest.TestCase):
    """transformers' model contract for HSNetForFewShotSegmentation."""

    all_model_classes = (HSNetForFewShotSegmentation,)
    has_attentions = False
    test_resize_embeddings = False
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = HSNetModelTester(self)
        self.config_tester = common.ConfigTester(self, config_class=HSNetConfig, has_text_modality=False,
                                                 common_properties=["backbone", "num_channels", "use_support_mask"])

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    @unittest.skip(reason="checks token embeddings (nn.Embedding); the backbone embeds pixels with a convolution")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(reason="HSNet's learner is a fixed architecture of 2,5M parameters (2,570,018 to 2,587,394 with the "
                          "official backbones), over the mixin's 1M limit for test models whatever the backbone")
    def test_model_is_small(self):
        pass

    def test_hidden_states_output(self):
        """One hidden state per shot: the learner's encoding before the decoder (the mixin expects one per layer)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = HSNetForFewShotSegmentation(config).eval()
        for via_config in (False, True):
            config.output_hidden_states = via_config
            with torch.no_grad():
                out = model(**inputs, **({} if via_config else {"output_hidden_states": True}))
            self.assertEqual([tuple(t.shape) for t in out.hidden_states], [(2, 128, 8, 10)] * 2)
        config.output_hidden_states = False
        with torch.no_grad():
            self.assertIsNone(model(**inputs).hidden_states)
