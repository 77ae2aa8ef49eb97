"""transformers' own ``ModelTesterMixin`` and ``ConfigTester`` (from the installed transformers' source distribution)
over every relzoo ``PreTrainedModel``, with one small tester per model written the way transformers writes them
for vision models (tiny configs, ``pixel_values`` inputs).

Tests that do not apply to a model are skipped below with a one-line reason; the README repeats the list.
"""
import unittest

import torch
from upstream import load_transformers_common

from relzoo import SANConfig, SANForImageClassification, SANModel

common = load_transformers_common()


class SANModelTester:
    """Tiny SANs: 5 stages of one block, widths 32..64, 3x3 footprints, 64x64 inputs."""

    def __init__(self, parent, sa_type="patchwise", batch_size=2, image_size=64, num_channels=3, num_labels=3,
                 is_training=True):
        self.parent, self.sa_type, self.batch_size, self.image_size = parent, sa_type, batch_size, image_size
        self.num_channels, self.num_labels, self.is_training = num_channels, num_labels, is_training
        self.widths = [32, 32, 64, 64, 64]
        self.num_stages = len(self.widths)

    def get_config(self) -> SANConfig:
        return SANConfig(sa_type=self.sa_type, layers=[1, 1, 1, 1, 1], kernels=[3, 3, 3, 3, 3], widths=self.widths,
                         stem_width=32, num_channels=self.num_channels, num_labels=self.num_labels)

    def prepare_config_and_inputs(self):
        pixel_values = common.floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = common.ids_tensor([self.batch_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, config, pixel_values, labels):
        model = SANModel(config).eval()
        with torch.no_grad():
            result = model(pixel_values)
        side = self.image_size // 32
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.widths[-1], side, side))
        self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.widths[-1]))

    def create_and_check_for_image_classification(self, config, pixel_values, labels):
        model = SANForImageClassification(config).eval()
        with torch.no_grad():
            result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))
        self.parent.assertEqual(result.loss.shape, ())


class SANPatchwiseModelTest(common.ModelTesterMixin, unittest.TestCase):
    """transformers' model contract for SAN with patchwise attention."""

    sa_type = "patchwise"
    all_model_classes = (SANModel, SANForImageClassification)
    pipeline_model_mapping = {"image-feature-extraction": SANModel, "image-classification": SANForImageClassification}
    has_attentions = False  # convolutional: no attention outputs
    test_resize_embeddings = False  # no token embeddings
    test_can_init_all_missing_weights_before_2023 = True  # a new model: its _init_weights must cover everything

    def setUp(self):
        self.model_tester = SANModelTester(self, sa_type=self.sa_type)
        self.config_tester = common.ConfigTester(self, config_class=SANConfig, has_text_modality=False,
                                                 common_properties=["num_channels", "layers", "kernels", "widths"])

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_image_classification(self):
        self.model_tester.create_and_check_for_image_classification(*self.model_tester.prepare_config_and_inputs())

    def test_hidden_states_output(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            for via_config in (False, True):
                config.output_hidden_states = via_config
                kwargs = {} if via_config else {"output_hidden_states": True}
                model = model_class(config).eval()
                with torch.no_grad():
                    out = model(**inputs_dict, **kwargs)
                # stem output (after its 2x2 max-pool) + one map per stage, stage i at 1 / 2**(i+1)
                self.assertEqual(len(out.hidden_states), self.model_tester.num_stages + 1)
                sides = [t.shape[-1] for t in out.hidden_states]
                size = self.model_tester.image_size
                self.assertEqual(sides, [size // 2] + [size // 2 ** (i + 1) for i in range(len(sides) - 1)])

    @unittest.skip(reason="checks token embeddings (nn.Embedding); SAN embeds pixels with a 1x1 convolution")
    def test_model_get_set_embeddings(self):
        pass


class SANPairwiseModelTest(SANPatchwiseModelTest):
    """transformers' model contract for SAN with pairwise attention."""

    sa_type = "pairwise"

