"""The Auto-FPN gradient search (official/search/darts.py).

One tiny neck search on digits (configs/search/auto_fpn_neck_digits.gin with
a 2-level, 2-layer, 8-wide neck: 8 links) is built once; its checkpoints
reset it between tests. Building and tracing the super-network is most of
this file's time; the resumption test builds a second search on purpose (a
restarted process).

Why 2 epochs and a network learning rate of 0.2 (the paper's 0.02 is for
detection, batch 16): the architecture gradient of the task loss carries
information only once the network has learned something. With the earlier
6-step run the loss stayed at ln(10) (the proxy's classifier saw logits of
std ~0.002), so for lambda 0.002 the decoded links were noise, and for 0.02
and 0.2 the cost term alone decided. Adam then makes the lambdas
indistinguishable: its steps are close to lr * sign(gradient), so once the
cost term sets the sign of every operation's gradient, a larger lambda
moves alpha no faster, and both settings fell to the same floor (a skip per
node, the forced keep of decode_edges). The ordering of Table 2 appears
only when the loss gradient is of a size between lambda_L and lambda_S
times the cost differences, i.e. once the network has trained.
"""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from modeling.decoders.auto_fpn import AutoFusionNeck
from official.search import darts

PROXY = "configs/search/auto_fpn_neck_digits.gin"
TINY = ["spnet.serial = 'BNB(11,d11,d11,d11)'", "spnet.max_level = 3",
        "auto_fpn.max_level = 3", "auto_fpn.num_layers = 2",
        "auto_fpn.num_filters = 8", "Trainer.train_batch_size = 32",
        "Trainer.train_epochs = 2", "Trainer.checkpoint_every_steps = 10",
        # The backbone is trained with the neck here (freeze_backbone=false
        # below), so the proxy's frozen backbone for retraining is undone.
        "Trainer.frozen_modules = None"]
# 719 trainA images at batch 32: 23 steps per epoch, 46 in all, architecture
# updates from step 15 (the first third). Measured on this run (seed 0): L
# 3864 > M 2888 > S 1192 decoded parameters, the same order after 10, 20
# and 31 architecture steps.
OPTIONS = {"size": "M", "freeze_backbone": "false", "log_every_steps": "23",
           "arch_lr": "0.1", "network_lr": "0.2"}
TOTAL_STEPS, ARCH_START = 46, 15


def _params(data_dir):
  return TINY + [f"digits_records.data_dir = '{data_dir}'"]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
  root = tmp_path_factory.mktemp("darts")
  built = darts.DartsSearch("auto_fpn_neck", str(root / "search"), [PROXY],
                            _params(root / "digits"), OPTIONS, seed=0).build()
  initial = built.checkpoint.write(str(root / "initial" / "ckpt"))
  built.initial_checkpoint = initial
  built.data_dir = root / "digits"
  return built


def _reset(search):
  # save_counter exists once the manager has saved; write() has none.
  search.checkpoint.read(search.initial_checkpoint).expect_partial()
  assert int(search.step.numpy()) == 0


def _values(variables):
  return [np.array(v.numpy()) for v in variables]


def _changed(before, variables):
  return any(not np.array_equal(b, a) for b, a in
             zip(before, _values(variables)))


def test_options_and_lambdas():
  assert darts.parse_options({"size": "S"}).lambda_value == 0.2
  assert darts.parse_options({"size": "L"}).lambda_value == 0.002
  assert darts.parse_options({"size": "M", "voc": "true"}).lambda_value == 0.01
  assert darts.parse_options({"resource_lambda": "0.5"}).lambda_value == 0.5
  with pytest.raises(ValueError, match="unknown key 'lamda'"):
    darts.parse_options({"lamda": "0.2"})
  with pytest.raises(ValueError, match="size='XL'"):
    darts.parse_options({"size": "XL"})
  with pytest.raises(ValueError, match="neck_gin=NECK_SEARCH_DIR"):
    darts.DartsSearch("auto_fpn_head", "/tmp/unused", [PROXY])
  with pytest.raises(ValueError, match="not 'mini'"):
    darts.DartsSearch("mini", "/tmp/unused", [PROXY])


def test_split_halves_are_disjoint_and_cover_the_training_set(search):
  records = {}
  for part in ("trainA", "trainB"):
    records[part] = [r.numpy() for r in tf.data.TFRecordDataset(
        search.parts[part]["pattern"])]
    assert len(records[part]) == search.parts[part]["num"]
  assert (len(records["trainA"]), len(records["trainB"])) == (719, 718)
  assert not set(records["trainA"]) & set(records["trainB"])
  source = search.task_a.data  # The copy reads trainA ...
  assert source["train_pattern"] == search.parts["trainA"]["pattern"]
  assert search.task_b.data["train_pattern"] == (
      search.parts["trainB"]["pattern"])
  # ... and the union is the whole training set.
  original = [r.numpy() for r in tf.data.TFRecordDataset(
      sorted(tf.io.gfile.glob(os.path.join(search.data_dir,
                                           "train-*"))))]
  if original:
    assert set(original) == set(records["trainA"]) | set(records["trainB"])


def _check_alternation(search, arch_start, frozen=()):
  """Runs arch_start + 2 steps, checking what each kind of step moves.

  A network step moves network weights and not alpha; an architecture step
  moves alpha and no network weight; no step before arch_start is an
  architecture step; `frozen` variables (a frozen backbone's, its batch-norm
  statistics included) move in neither.
  """
  network, arch = search.network_weights, search.architecture_weights
  assert len(arch) == 1 and not any(v is arch[0] for v in network)
  frozen = list(frozen)
  calls = []
  network_step, arch_step = search._network_step, search._arch_step

  def checked_network_step(features, labels):
    arch_before, net_before = _values(arch), _values(network)
    frozen_before = _values(frozen)
    out = network_step(features, labels)
    assert not _changed(arch_before, arch), "a network step moved alpha"
    assert _changed(net_before, network)
    assert not _changed(frozen_before, frozen), "the frozen part moved"
    calls.append("network")
    return out

  def checked_arch_step(features, labels):
    arch_before, net_before = _values(arch), _values(network)
    frozen_before = _values(frozen)
    out = arch_step(features, labels)
    assert not _changed(net_before, network), "an alpha step moved weights"
    assert _changed(arch_before, arch)
    assert not _changed(frozen_before, frozen), "the frozen part moved"
    calls.append("arch")
    return out

  search._network_step, search._arch_step = (checked_network_step,
                                             checked_arch_step)
  try:
    alpha0 = _values(arch)
    for _ in range(arch_start):
      search.run_step()
    # No architecture update in the first third of the epochs.
    assert not _changed(alpha0, arch)
    for _ in range(arch_start, arch_start + 2):
      search.run_step()
  finally:
    search._network_step, search._arch_step = network_step, arch_step
  assert calls == ["network"] * (arch_start + 1) + ["arch", "network",
                                                    "arch"]


def test_alternating_updates_touch_only_their_own_weights(search):
  _reset(search)
  assert (search.total_steps, search.arch_start_step) == (TOTAL_STEPS,
                                                          ARCH_START)
  _check_alternation(search, ARCH_START)


def test_decoded_size_shrinks_as_lambda_grows(search, tmp_path):
  # Table 2: the S < M < L settings give smaller modules with larger lambda.
  # The steps before the architecture phase do not depend on lambda: they
  # run once, and each lambda continues from there (module docstring).
  _reset(search)
  for _ in range(ARCH_START):
    search.run_step()
  warm = search.checkpoint.write(str(tmp_path / "warm" / "ckpt"))
  counts = {}
  for size in ("L", "M", "S"):
    search.checkpoint.read(warm).expect_partial()
    search.resource_lambda.assign(darts.SIZE_LAMBDAS[size])
    for _ in range(ARCH_START, TOTAL_STEPS):
      search.run_step()
    counts[size] = darts.decoded_parameter_count(search.module,
                                                 search.module.decode())
  assert counts["L"] > counts["M"] > counts["S"], counts
  search.resource_lambda.assign(search.options.lambda_value)


def test_resumed_search_ends_where_an_uninterrupted_one_does(search, capsys):
  _reset(search)
  # Interrupted in the architecture phase, with a checkpoint there ...
  assert search.run(max_steps=30, verbose=False) == {"step": 30,
                                                      "finished": False}
  # ... and a new process on the same directory continues it.
  restarted = darts.DartsSearch("auto_fpn_neck", search.search_dir, [PROXY],
                                _params(search.data_dir), OPTIONS, seed=0)
  result = restarted.run()
  assert "Resumed the search from" in capsys.readouterr().out
  assert result["steps"] == TOTAL_STEPS
  resumed_alpha = restarted.module.alpha.numpy()
  # Uninterrupted, from the same start.
  _reset(search)
  for _ in range(TOTAL_STEPS):
    search.run_step()
  np.testing.assert_allclose(resumed_alpha, search.module.alpha.numpy(),
                             rtol=1e-5, atol=1e-6)
  # No step logged twice.
  log = darts.read_alpha_log(search.search_dir)
  assert [r["step"] for r in log] == [0, 23, 46]
  assert np.allclose(np.sum(log[-1]["softmax"], axis=1), 1.0, atol=1e-4)

  # Outputs, and the decoded gin builds the discrete neck of decode().
  for name in ("best_auto_fpn_neck.gin", "alpha.png", "alpha_log.jsonl",
               "search_result.json"):
    assert os.path.exists(os.path.join(search.search_dir, name)), name
  with open(os.path.join(search.search_dir, "search_result.json")) as f:
    written = json.load(f)
  assert written["genotype"] == restarted.module.decode()
  from official import registry  # pylint: disable=g-import-not-at-top
  from official.core import checkpointing  # pylint: disable=g-import-not-at-top
  from official.core import gin_config  # pylint: disable=g-import-not-at-top
  gin_config.parse_gin(
      [PROXY, os.path.join(search.search_dir, "best_auto_fpn_neck.gin")],
      _params(search.data_dir), skip_unknown=False)
  model = registry.experiment().build_model()
  neck = checkpointing.model_modules(model)["decoder"]
  assert isinstance(neck, AutoFusionNeck) and not neck.search
  assert neck.genotype == written["genotype"]
  assert neck.count_params() == written["decoded_parameters"]
  gin.clear_config()


# The head search (--space=auto_fpn_head) on the synthetic Faster R-CNN proxy
# with a fixed neck: one skip link per level and layer (the cheapest neck
# with an input at every node), written as a neck search would write it.
HEAD_PROXY = "configs/search/auto_fpn_head_synthetic_coco.gin"
SKIP_NECK = [[["skip" if i == j else "none" for j in range(4)]
              for i in range(4)] for _ in range(2)]
# 8 training images at batch 2: trainA 4 images, 2 steps per epoch, 4 in
# all, architecture updates from step round(4 / 3) = 1.
HEAD_TINY = ["synthetic_coco_records.num_train = 8",
             "synthetic_coco_records.num_val = 2",
             "Trainer.train_batch_size = 2", "Trainer.train_epochs = 2",
             "FasterRCNNTask.num_sampled_rois = 8",
             "FasterRCNNTask.rpn_post_nms_top_k = 16"]


def test_head_search_on_the_faster_rcnn_proxy_decodes_a_discrete_head(
    tmp_path, no_gin_bindings):
  del no_gin_bindings
  # pylint: disable=g-import-not-at-top
  from modeling.heads.auto_head import AutoHead, check_head_genotype
  from official import registry
  from official.core import gin_config
  # pylint: enable=g-import-not-at-top
  neck_gin = tmp_path / "neck" / darts.BEST_GIN["auto_fpn_neck"]
  neck_gin.parent.mkdir()
  neck_gin.write_text("# A fixed neck for the test.\n"
                      "auto_fpn.search = False\n"
                      f"auto_fpn.genotype = {json.dumps(SKIP_NECK)}\n")
  params = HEAD_TINY + [
      f"synthetic_coco_records.data_dir = '{tmp_path / 'data'}'"]
  search = darts.DartsSearch(
      "auto_fpn_head", str(tmp_path / "search"), [HEAD_PROXY], params,
      {"neck_gin": str(neck_gin.parent), "log_every_steps": "2"},
      seed=0).build()
  assert isinstance(search.module, AutoHead) and search.module.search
  assert not search.model.decoder.search  # The decoded neck, fixed.
  assert search.model.decoder.genotype == SKIP_NECK
  assert (search.total_steps, search.arch_start_step) == (4, 1)
  # The backbone is frozen (Table 7): neither step moves any of its
  # variables; the head's beta alone moves on architecture steps.
  assert not search.model.backbone.trainable_variables
  _check_alternation(search, 1, frozen=search.model.backbone.variables)
  result = search.run(verbose=False)
  assert result["steps"] == 4 and result["space"] == "auto_fpn_head"
  genotype = check_head_genotype(result["genotype"], 2)
  assert genotype == search.module.decode()

  # best_auto_fpn_head.gin, after the proxy, builds the decoded neck and
  # head, discrete, with the counted parameters.
  best = tmp_path / "search" / darts.BEST_GIN["auto_fpn_head"]
  gin_config.parse_gin([HEAD_PROXY, str(best)], params, skip_unknown=False)
  model = registry.experiment().build_model()
  head = model.fast_rcnn_head
  assert isinstance(head, AutoHead) and not head.search
  assert head.genotype == genotype and head.use_batch_norm
  assert head.count_params() == result["decoded_parameters"]
  assert model.decoder.genotype == SKIP_NECK and not model.decoder.search
  gin.clear_config()
