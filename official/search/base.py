"""The contracts between search spaces, controllers and the trial engine.

A search is a sequence of discrete decisions. A search space turns a
decision list into an architecture (and back), says which options are valid
at each step given the earlier decisions (so controllers mask invalid choices
instead of rejecting samples after the fact), and renders an architecture as
the gin bindings a trial trains with. A controller proposes decision lists
and learns from their rewards; it knows nothing of the engine that runs the
trials (OSS Vizier by default), so another engine can drive it through the
same four calls: suggest, update, get_state, set_state.
"""

import abc
import dataclasses


class SearchSpace(abc.ABC):
  """A discrete architecture space as a sequence of masked decisions.

  Attributes:
    name: preset name, e.g. "spinenet49", "mini", "resource".
  """

  name = None

  @abc.abstractmethod
  def num_decisions(self):
    """Number of decisions in every decision list (fixed per space)."""

  @abc.abstractmethod
  def num_options(self, step):
    """Options at decision `step` before masking (an int >= 1)."""

  @abc.abstractmethod
  def valid_options(self, prefix):
    """Valid option indices for decision len(prefix), given the prefix.

    Args:
      prefix: list of the decisions already taken (ints).
    Returns:
      a non-empty sorted list of ints in [0, num_options(len(prefix))).
    """

  @abc.abstractmethod
  def decode(self, decisions):
    """The architecture (a JSON-serialisable value) of a full decision list.

    Raises:
      ValueError: a decision outside its valid options, naming the step.
    """

  @abc.abstractmethod
  def encode(self, architecture):
    """The decision list of an architecture of this space (inverse of decode).

    Raises:
      ValueError: the architecture is not in this space, saying why.
    """

  @abc.abstractmethod
  def gin_bindings(self, architecture):
    """Gin binding strings that make a trial train this architecture."""

  def log10_size(self):
    """log10 of the number of distinct valid decision lists."""
    raise NotImplementedError

  def known_architectures(self):
    """dict name -> architecture a search may be seeded with."""
    return {}

  def valid_mask(self, prefixes):
    """Valid options of one step for many prefixes at once.

    Args:
      prefixes: int array [batch, step], each row the decisions already taken.
    Returns:
      bool array [batch, num_options(step)], True where an option is valid.
    Spaces override it with a vectorised version (controllers sample in
    batches with it); this default asks valid_options row by row.
    """
    import numpy as np  # pylint: disable=g-import-not-at-top
    prefixes = np.asarray(prefixes, dtype=np.int64)
    step = prefixes.shape[1]
    mask = np.zeros((prefixes.shape[0], self.num_options(step)), dtype=bool)
    for row, prefix in enumerate(prefixes):
      mask[row, self.valid_options([int(d) for d in prefix])] = True
    return mask

  def mutation_groups(self):
    """How an evolution controller may mutate a decision list.

    Returns:
      list of (kind, steps): kind "permutation" (swap the decisions of two of
      `steps`) or "resample" (draw `steps` again from their masks, e.g. a
      parent pair, a block type, a level adjustment). The default resamples
      one decision at a time.
    """
    return [("resample", [step]) for step in range(self.num_decisions())]

  def infeasibility(self, architecture):
    """None, or why the architecture must not be trained.

    The trial engine completes such a trial as infeasible (reward None) with
    this reason instead of training it, so it is reported, not dropped
    (e.g. a resource sample outside the FLOPs budget).
    """
    del architecture
    return None


@dataclasses.dataclass
class Proposal:
  """One trial a controller asks for.

  decisions: the decision list (list of int) stored as the trial's Vizier
    parameters.
  architecture: the architecture to train, or None (then the space decodes
    the decisions). Controllers whose candidates depend on earlier results
    (SP-NAS morphs the best network so far) give it here.
  run: dict of how the worker runs the trial, JSON values, all optional:
    "inherit_from_trials": trial ids whose saved weights initialise the
    candidate (Trainer.inherit_weights_from, earlier ids take precedence);
    "wait_for_trials": trial ids that must be completed before it starts (the
    weights it inherits are written at their end); "gin_files": "pretrain" to
    train with the study's --pretrain_gin_file proxy instead of --gin_file;
    "save_weights": True to keep the trained weights for later candidates
    (Trainer.save_inheritable_weights); "auxiliary": True for a trial whose reward is not a candidate's score (a
    classification pre-training), which the outputs do not rank.
  """
  decisions: list
  architecture: object = None
  run: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrialView:
  """What a controller sees of a trial of the study.

  trial_id: int, Vizier's id. decisions: list of int. reward: float, or None
  for an infeasible or still active trial. info: the trial's official_search
  metadata (architecture, gin_bindings, run, worker, metrics, ...).
  active: True while the trial is not finished.
  """
  trial_id: int
  decisions: list
  reward: object
  info: dict
  active: bool = False


class Controller(abc.ABC):
  """Proposes decision lists and learns from their rewards.

  Rewards are maximised. A trial that failed (NaN loss, out of memory) is
  reported with reward None ("infeasible"); the controller must treat it as
  a poor outcome, not ignore it.
  """

  def suggest(self):
    """A new full decision list (list of int), valid under the space's masks.

    Decision-list controllers implement suggest() and update(); controllers
    whose trials carry more (see Proposal) implement propose() and learn()
    instead.
    """
    raise NotImplementedError(
        f"{type(self).__name__} implements neither suggest() nor propose().")

  def update(self, decisions, reward):
    """Learns from one finished trial; reward is a float or None."""
    raise NotImplementedError(
        f"{type(self).__name__} implements neither update() nor learn().")

  @abc.abstractmethod
  def get_state(self):
    """The controller's whole state as a JSON-serialisable dict."""

  @abc.abstractmethod
  def set_state(self, state):
    """Restores a state from get_state(); suggestions then continue as if
    the controller had never stopped."""

  # Controllers whose candidates depend on which trial produced what (weight
  # inheritance) override the three methods below; the others need not.

  def propose(self):
    """The next trial as a Proposal, or None when the search is finished
    (workers then stop; the study ends with fewer than --num_trials)."""
    return Proposal(decisions=[int(d) for d in self.suggest()])

  def learn(self, trial):
    """Learns from one finished trial (a TrialView); the default passes its
    decisions and reward to update()."""
    self.update(trial.decisions, trial.reward)

  def observe_active(self, trials):
    """Sees the trials that are running (list of TrialView) before each
    proposal, e.g. to name a running trial a new one must wait for."""
    del trials
