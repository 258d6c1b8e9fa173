"""Each protocol file holds exactly the values of the paper it cites."""

import os

import gin
import pytest

from official import registry  # pylint: disable=unused-import  (registers names)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHARED_DETECTION = {
    "Trainer.train_batch_size": 256,
    "Trainer.weight_decay": 4e-5,
    "build_optimizer.momentum": 0.9,
    "learning_rate_schedule.base_learning_rate": 0.28,
    "learning_rate_schedule.warmup_epochs": 5,
    "learning_rate_schedule.decay": "step",
    "learning_rate_schedule.step_decay_last_epochs": (30, 10),
    "learning_rate_schedule.step_decay_factors": (0.1, 0.01),
    "norm_activation.use_sync_bn": True,
    "norm_activation.norm_momentum": 0.99,
}

PROTOCOLS = {
    "protocol_a": {"Trainer.train_epochs": 250,
                   "RetinaNetTask.aug_scale_min": 0.8,
                   "RetinaNetTask.aug_scale_max": 1.2,
                   "regularization.dropblock_keep_prob": 0.9,
                   "regularization.dropblock_size": 3,
                   "norm_activation.activation": "relu",
                   "regularization.init_stochastic_depth_rate": 0.0},
    "protocol_b": {"Trainer.train_epochs": 350,
                   "RetinaNetTask.aug_scale_min": 0.5,
                   "RetinaNetTask.aug_scale_max": 2.0,
                   "regularization.dropblock_keep_prob": None,
                   "norm_activation.activation": "relu",
                   "regularization.init_stochastic_depth_rate": 0.0},
    "protocol_c": {"Trainer.train_epochs": 500,
                   "RetinaNetTask.aug_scale_min": 0.5,
                   "RetinaNetTask.aug_scale_max": 2.0,
                   "regularization.dropblock_keep_prob": None,
                   "norm_activation.activation": "swish",
                   "regularization.init_stochastic_depth_rate": 0.2},
    "classification": {"Trainer.train_batch_size": 4096,
                       "Trainer.train_epochs": 200,
                       "learning_rate_schedule.decay": "cosine",
                       "learning_rate_schedule.base_learning_rate": 1.6,
                       "learning_rate_schedule.reference_batch_size": 4096,
                       "learning_rate_schedule.warmup_epochs": 5,
                       "Trainer.weight_decay": 1e-4,
                       "regularization.init_stochastic_depth_rate": 0.0,
                       "ClassificationTask.label_smoothing": 0.0,
                       "norm_activation.activation": "relu"},
    "classification_improved": {
        "Trainer.train_epochs": 200,
        "regularization.init_stochastic_depth_rate": 0.2,
        "norm_activation.activation": "swish",
        "ClassificationTask.label_smoothing": 0.1},
}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_protocol_values(name):
  gin.clear_config()
  gin.parse_config_file(os.path.join(REPO, "configs", "protocols",
                                     name + ".gin"))
  expected = dict(PROTOCOLS[name])
  if name.startswith("protocol_"):
    expected.update(SHARED_DETECTION)
  for binding, value in expected.items():
    assert gin.query_parameter(binding) == value, binding


@pytest.mark.parametrize("protocol", ["protocol_a", "protocol_b"])
def test_protocol_overrides_experiment_default(protocol):
  """Experiments default to protocol C; a later protocol file wins."""
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(REPO, "configs/experiments/retinanet/spinenet49_coco.gin"),
       os.path.join(REPO, f"configs/protocols/{protocol}.gin")], [])
  assert gin.query_parameter("Trainer.train_epochs") == (
      PROTOCOLS[protocol]["Trainer.train_epochs"])
  assert gin.query_parameter("norm_activation.activation") == "relu"
