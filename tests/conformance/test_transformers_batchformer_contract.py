"""transformers' own ``ModelTesterMixin`` and ``ConfigTester`` over BatchFormerForImageClassification (V1 on timm's
``test_resnet``, V2 after a block of a tiny ViT), with testers written the way transformers writes vision ones."""
import unittest

import torch
from upstream import load_transformers_common

from relzoo import BatchFormerConfig, BatchFormerForImageClassification

common = load_transformers_common()


class BatchFormerModelTester:
    def __init__(self, parent, version=1, batch_size=3, image_size=32, num_labels=3, is_training=True):
        self.parent, self.version, self.batch_size = parent, version, batch_size
        self.image_size, self.num_labels, self.is_training = image_size, num_labels, is_training

    def get_config(self):
        if self.version == 1:
            return BatchFormerConfig(backbone="test_resnet", num_labels=self.num_labels)
        return BatchFormerConfig(backbone="vit_tiny_patch16_224", num_labels=self.num_labels, version=2,
                                 insert_after=["blocks.0"], backbone_kwargs=dict(
                                     img_size=self.image_size, patch_size=8, embed_dim=32, depth=2, num_heads=2))

    def prepare_config_and_inputs(self):
        pixel_values = common.floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        labels = common.ids_tensor([self.batch_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, config, pixel_values, labels):
        model = BatchFormerForImageClassification(config)
        out = model.train()(pixel_values, labels=labels)             # both streams in the loss, plain logits out
        self.parent.assertEqual(out.logits.shape, (self.batch_size, self.num_labels))
        self.parent.assertEqual(out.loss.shape, ())
        with torch.no_grad():
            out = model.eval()(pixel_values, labels=labels)
        self.parent.assertEqual(out.logits.shape, (self.batch_size, self.num_labels))


class BatchFormerV1ContractTest(common.ModelTesterMixin, unittest.TestCase):
    """transformers' model contract for BatchFormer V1 on a timm classifier."""

    version = 1
    all_model_classes = (BatchFormerForImageClassification,)
    pipeline_model_mapping = {"image-classification": BatchFormerForImageClassification}
    has_attentions = False
    test_resize_embeddings = False
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = BatchFormerModelTester(self, version=self.version)
        self.config_tester = common.ConfigTester(self, config_class=BatchFormerConfig, has_text_modality=False,
                                                 common_properties=["backbone", "num_channels", "version"])

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_hidden_states_output(self):
        """Two hidden states: the backbone's features and the pooled features (the plain stream's)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for via_config in (False, True):
            config.output_hidden_states = via_config
            model = BatchFormerForImageClassification(config).eval()
            with torch.no_grad():
                out = model(**inputs, **({} if via_config else {"output_hidden_states": True}))
            self.assertEqual(len(out.hidden_states), 2)
            self.assertEqual(out.hidden_states[1].shape[0], self.model_tester.batch_size)

    @unittest.skip(reason="checks token embeddings (nn.Embedding); the timm backbones embed pixels with convolutions")
    def test_model_get_set_embeddings(self):
        pass


class BatchFormerV2ContractTest(BatchFormerV1ContractTest):
    """transformers' model contract for BatchFormer V2 after a block of a timm ViT."""

    version = 2
