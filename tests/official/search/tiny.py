"""A tiny search space, controller and fake trainer for the engine's tests.

The space: 3 decisions of 3 options, the second masked to differ from the
first. The fake trainer (run as a .py script with official.train's flags)
"trains" `fake_steps` steps of `fake_step_seconds`, resuming from the step
saved in its model_dir, and writes eval_metrics.json with a top_1_accuracy
that is a known function of the decisions; the decisions [1, 0, 1] exit with
a NonFiniteLossError like a real NaN run.
"""

import json
import os
import sys
import time

import numpy as np

from official.search import base

BROKEN = [1, 0, 1]
# The space refuses to train this one (as the resource space refuses samples
# outside its FLOPs budget): the worker completes it infeasible, untrained.
REFUSED = [2, 0, 2]


def expected_reward(decisions):
  return sum(decisions) / 6.0


class TinySpace(base.SearchSpace):
  name = "tiny"

  def num_decisions(self):
    return 3

  def num_options(self, step):
    return 3

  def valid_options(self, prefix):
    if len(prefix) == 1:
      return [o for o in range(3) if o != prefix[0]]
    return [0, 1, 2]

  def decode(self, decisions):
    for step, d in enumerate(decisions):
      if d not in self.valid_options(list(decisions[:step])):
        raise ValueError(f"decision {step} = {d} is not valid")
    return {"decisions": list(decisions)}

  def encode(self, architecture):
    return list(architecture["decisions"])

  def gin_bindings(self, architecture):
    return [f"fake.decisions = {architecture['decisions']}"]

  def log10_size(self):
    return float(np.log10(18))

  def infeasibility(self, architecture):
    if architecture["decisions"] == REFUSED:
      return "over the tiny budget"
    return None

  def known_architectures(self):
    return {"first": {"decisions": [0, 1, 0]},
            "broken": {"decisions": BROKEN},
            "refused": {"decisions": REFUSED}}


class TinyController(base.Controller):
  """Seeded masked random suggestions; remembers every update it got."""

  def __init__(self, space, seed):
    self.space, self.seed, self.count, self.history = space, seed, 0, []

  def suggest(self):
    rng = np.random.default_rng([self.seed, self.count])
    self.count += 1
    while True:  # The broken architecture only runs when seeded.
      out = []
      for _ in range(self.space.num_decisions()):
        out.append(int(rng.choice(self.space.valid_options(out))))
      if out not in (BROKEN, REFUSED):
        return out

  def update(self, decisions, reward):
    self.history.append([list(decisions), reward])

  def get_state(self):
    return {"count": self.count, "history": self.history}

  def set_state(self, state):
    self.count, self.history = state["count"], state["history"]


def tiny_space():
  return TinySpace()


def tiny_controller(space, seed):
  return TinyController(space, seed)


def _fake_main(argv):
  flags = {}
  params = []
  for arg in argv:
    key, _, value = arg.lstrip("-").partition("=")
    if key == "gin_param":
      params.append(value)
    else:
      flags[key] = value
  config = {}
  for param in params:
    name, _, value = param.partition("=")
    config[name.strip()] = json.loads(value.strip())
  model_dir = flags["model_dir"]
  os.makedirs(model_dir, exist_ok=True)
  decisions = config["fake.decisions"]
  step_file = os.path.join(model_dir, "steps.txt")
  step = int(open(step_file).read()) if os.path.exists(step_file) else 0
  with open(os.path.join(model_dir, "starts.txt"), "a") as f:
    f.write(f"{step}\n")
  if decisions == BROKEN:
    print("official.core.trainer.NonFiniteLossError: loss became NaN")
    sys.exit(1)
  for step in range(step + 1, int(config.get("fake.steps", 3)) + 1):
    time.sleep(float(config.get("fake.step_seconds", 0.0)))
    with open(step_file + ".tmp", "w") as f:
      f.write(str(step))
    os.replace(step_file + ".tmp", step_file)
  metrics = {"step": step, "top_1_accuracy": expected_reward(decisions)}
  if config.get("fake.nan_reward"):
    metrics["top_1_accuracy"] = float("nan")
  with open(os.path.join(model_dir, "eval_metrics.json"), "w") as f:
    json.dump(metrics, f)


if __name__ == "__main__":
  _fake_main(sys.argv[1:])
