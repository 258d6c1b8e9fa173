"""scripts/auto_fpn_demo.py: its random sampler, gin files, summary and flags.

Nothing trains here: the search and the trainings the script drives have
their own tests (tests/official/search/test_darts.py, the smoke configs).
What is checked is what the script adds: random architectures that a search
could have decoded (Auto-FPN Sec. 3.2), written as the bindings the search
writes, and the comparison it prints (Sec. 4.3, Table 8: random search).
"""

import importlib.util
import json
import os

import gin
import numpy as np
import pytest

from modeling.decoders.auto_fpn import check_neck_genotype
from modeling.layers.auto_fpn_ops import NECK_OPS
from official.core import gin_config
from official.search import darts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location(
    "auto_fpn_demo", os.path.join(REPO, "scripts", "auto_fpn_demo.py"))
demo = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(demo)


def test_random_genotypes_are_valid_seeded_and_uniform_over_operations():
  draws = [demo.random_genotype(0, k, 3, 2) for k in range(400)]
  for genotype in draws:
    assert check_neck_genotype(genotype, 3, 2) == genotype
  assert demo.random_genotype(0, 7, 3, 2) == draws[7]
  assert demo.random_genotype(1, 7, 3, 2) != draws[7]
  assert len({json.dumps(g) for g in draws}) == len(draws)
  links = [op for g in draws for layer in g for node in layer for op in node]
  share = {op: links.count(op) / len(links) for op in NECK_OPS}
  # Uniform over the 8^3 - 1 rows of a 3-input node that are not all none:
  # P(none) = (8^2 - 1) / 511, every other operation 8^2 / 511.
  for op in NECK_OPS:
    expected = (63 if op == "none" else 64) / 511
    assert abs(share[op] - expected) < 0.02, (op, share[op], expected)


class _AllNoneFirst:
  """A generator whose first draw for a node is all `none` (index 0)."""

  def __init__(self):
    self.calls = 0

  def integers(self, high, size):
    self.calls += 1
    return np.zeros(size, int) if self.calls == 1 else np.full(size, 1)


def test_a_node_drawn_with_only_none_links_is_drawn_again():
  rng = _AllNoneFirst()
  genotype = demo.sample_genotype(rng, 2, 1)
  assert genotype == [[["skip", "skip"], ["skip", "skip"]]]
  assert rng.calls == 3  # Node 0 twice (all none, then skip), node 1 once.


def test_sample_genotype_rejects_a_bad_size():
  with pytest.raises(ValueError, match="num_levels must be an integer >= 1"):
    demo.sample_genotype(np.random.default_rng(0), 0, 2)


def test_random_gin_has_the_bindings_of_the_searched_gin(tmp_path):
  genotype = demo.random_genotype(3, 1, 3, 2)
  path = tmp_path / demo.RANDOM_GIN
  path.write_text(demo.genotype_gin_text(genotype, 3, 1, [demo.PROXY]))
  lines = darts.search_bindings(str(path))
  assert lines == ["auto_fpn.search = False",
                   f"auto_fpn.genotype = {json.dumps(genotype)}"]
  from official import registry  # pylint: disable=g-import-not-at-top
  del registry  # Registers what the proxy names.
  gin_config.parse_gin([os.path.join(REPO, demo.PROXY), str(path)], [],
                       skip_unknown=False)
  try:
    assert gin.query_parameter("auto_fpn.search") is False
    assert gin.query_parameter("auto_fpn.genotype") == genotype
  finally:
    gin.clear_config()


def test_summarize_gives_mean_sample_std_and_rank():
  summary = demo.summarize(0.9, [0.8, 0.9, 1.0])
  assert summary["random_mean"] == pytest.approx(0.9)
  assert summary["random_std"] == pytest.approx(0.1)  # ddof=1
  assert summary["searched_minus_mean"] == pytest.approx(0.0)
  assert summary["random_beaten"] == 1
  assert summary["rank"] == 2
  assert demo.summarize(0.5, [0.4])["random_std"] is None
  with pytest.raises(ValueError, match="no random architectures"):
    demo.summarize(0.5, [])


@pytest.mark.parametrize("argv, message", [
    (["--num_random=0"], "--num_random=0: at least 1"),
    (["--epochs=0"], "--epochs=0: must be >= 1"),
    (["--quick", "--epochs=2"], "give --quick or --epochs, not both"),
    (["--search_options=size"], "'size' is not key=value"),
])
def test_bad_flags_are_refused_naming_the_flag(argv, message, capsys):
  with pytest.raises(SystemExit):
    demo.parse_args(["--output_dir=/nonexistent/x"] + argv)
  assert message in capsys.readouterr().err


def test_quick_sets_one_epoch_and_defaults_hold():
  args = demo.parse_args(["--output_dir=d", "--quick"])
  assert args.epochs == demo.QUICK_EPOCHS == 1
  args = demo.parse_args(["--output_dir=d"])
  assert (args.num_random, args.seed, args.epochs) == (5, 0, None)
  assert args.search_options == "size=M,arch_lr=0.03"
