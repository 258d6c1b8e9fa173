"""The RNN controller of the SpineNet search (SpineNet paper §5.1, after Zoph &
Le, "Neural Architecture Search with Reinforcement Learning", ICLR 2017).

An LSTM reads the decision sequence: its input at step t is the decision
taken at step t - 1 (a learned row per (step, option); a start row at t = 0),
and one softmax per step, over that step's options masked to the valid ones
(the space's masks), gives the next decision. Sampling and learning are numpy
with hand-written backpropagation through time, batched over the samples of
a policy update, so a 500-trial search over the 70 decisions of the
spinenet49 space takes 1-2 s of CPU time.

Two policy-gradient rules:
- REINFORCE (Williams 1992) with an exponential-moving-average baseline, as
  Zoph & Le: grad = mean_b (R_b - baseline) * grad log pi(a_b).
- PPO (Schulman et al., "Proximal Policy Optimization Algorithms", 2017, the
  clipped objective; NAS-FPN and Zoph et al. 2018 train their controllers
  with it): `ppo_epochs` passes over each batch, ratios to the policy that
  sampled it, clipped at 1 +- `ppo_clip`.
The SpineNet paper does not say which; both are here.

Settings (the papers leave them to the search; calibrated on the surrogate
reward of official/search/surrogate.py, 10 seeds x 500 trials, on the
spinenet49 and resource spaces):
- one LSTM layer of 32 units (Zoph & Le use 2 x 35; one layer keeps the
  hand-written backpropagation short and the 500-trial check fast).
- weights uniform in [-0.08, 0.08] (Zoph & Le), output layers included, so
  the first policy is close to uniform over the valid options.
- Adam, learning rate 0.02, gradient norm clipped at 5. Zoph & Le's 6e-4
  suits their 12,800 trials; at 500 it leaves the policy at random search's
  level (REINFORCE on spinenet49, last-100 mean 0.35 = random's), 0.005
  reaches 0.45, 0.02 0.83.
- a policy update every 10 finished trials for REINFORCE, every 20 for PPO
  (the batch; workers keep sampling from the current policy meanwhile). PPO
  takes 4 steps per batch, so fewer, larger batches suit it: at 20 its
  last-100 mean rose from 0.79 to 0.84 on spinenet49 and halved its cost;
  REINFORCE at 20 fell from 0.83 to 0.70.
- baseline decay 0.9 (the moving average follows the improving rewards of a
  short search).
- PPO: clip 0.2 (Schulman et al.), 4 epochs per batch.
Infeasible trials (reward None) count as the worst reward seen so far
(common.RewardFloor).
"""

import contextlib

import numpy as np

from official.search import base
from official.search.controllers import common

HIDDEN_SIZE = 32
LEARNING_RATE = 0.02
BATCH_SIZE = {"reinforce": 10, "ppo": 20}
BASELINE_DECAY = 0.9
INIT_SCALE = 0.08
GRAD_CLIP_NORM = 5.0
PPO_CLIP = 0.2
PPO_EPOCHS = 4
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
# Old log-probabilities of suggestions kept for PPO ratios: trials lost by
# the engine must not grow the state forever.
_MAX_PENDING = 1000

try:
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  _BLAS = threadpoolctl.ThreadpoolController()
except ImportError:  # scikit-learn's dependency; without it BLAS is default.
  _BLAS = None


def _one_blas_thread():
  """The controller's matrices are tiny: a multi-threaded BLAS spends more
  on waking threads than on the products (8x slower measured on 2 busy
  cores), so they run on one thread."""
  if _BLAS is None:
    return contextlib.nullcontext()
  return _BLAS.limit(limits=1, user_api="blas")


class LSTMPolicy:
  """A masked autoregressive policy over a space's decision lists.

  Shapes: T decisions, O = max options per step, H hidden units, B samples.
  Parameters: wx [1 + sum_t O_t, 4H] (one input row per (step, option) plus
  the start row; a row also serves as the gate bias, as every step reads
  exactly one), wh [H, 4H], wo [T, H, O], bo [T, O]. Gates input, forget,
  output, candidate from z = wx[row] + h wh: the first three sigmoid(2 z)
  written (1 + tanh z) / 2, so one tanh serves all four; the candidate
  tanh z.
  """

  NAMES = ("wx", "wh", "wo", "bo")

  def __init__(self, space, hidden_size, rng):
    self.space = space
    self.num_steps = space.num_decisions()
    self.num_options = [space.num_options(t) for t in range(self.num_steps)]
    self.max_options = max(self.num_options)
    # Input row of decision d at step t: row_offset[t] + d.
    self.row_offset = 1 + np.concatenate(
        [[0], np.cumsum(self.num_options)[:-1]]).astype(np.int64)
    h = hidden_size
    self.hidden_size = h
    rows = 1 + sum(self.num_options)
    u = lambda *shape: rng.uniform(-INIT_SCALE, INIT_SCALE, size=shape)
    self.params = {"wx": u(rows, 4 * h), "wh": u(h, 4 * h),
                   "wo": u(self.num_steps, h, self.max_options),
                   "bo": np.zeros((self.num_steps, self.max_options))}
    # Options beyond a step's own count never exist.
    self._pad = np.arange(self.max_options)[None, :] >= np.array(
        self.num_options)[:, None]

  def _cell(self, z, c):
    hs = self.hidden_size
    t = np.tanh(z)
    gates = t[:, :3 * hs] * 0.5 + 0.5
    c = gates[:, hs:2 * hs] * c + gates[:, :hs] * t[:, 3 * hs:]
    tc = np.tanh(c)
    return t, c, tc, gates[:, 2 * hs:] * tc

  def _mask(self, decisions, t):
    mask = np.zeros((decisions.shape[0], self.max_options), dtype=bool)
    mask[:, :self.num_options[t]] = self.space.valid_mask(decisions[:, :t])
    return mask

  def sample(self, batch, rng):
    """[batch, T] decision lists and their log-probabilities [batch]."""
    p = self.params
    decisions = np.zeros((batch, self.num_steps), dtype=np.int64)
    logp = np.zeros(batch)
    h = np.zeros((batch, self.hidden_size))
    c = np.zeros_like(h)
    rows = np.zeros(batch, dtype=np.int64)
    index = np.arange(batch)
    for t in range(self.num_steps):
      _, c, _, h = self._cell(p["wx"][rows] + h @ p["wh"], c)
      logits = np.where(self._mask(decisions, t), h @ p["wo"][t] + p["bo"][t],
                        -np.inf)
      prob = np.exp(logits - logits.max(axis=1, keepdims=True))
      cum = np.cumsum(prob, axis=1)
      u = rng.random(batch) * cum[:, -1]
      choice = (cum <= u[:, None]).sum(axis=1)
      # u just below the total can pass the last valid option by rounding.
      bad = (choice >= self.max_options) | (prob[index, np.minimum(
          choice, self.max_options - 1)] == 0)
      if bad.any():
        choice = np.where(bad, np.argmax(cum >= cum[:, -1:], axis=1), choice)
      decisions[:, t] = choice
      logp += np.log(prob[index, choice] / cum[:, -1])
      rows = self.row_offset[t] + choice
    return decisions, logp

  def masks(self, decisions):
    """Valid options of every step, bool [T, B, O], for decision lists
    [B, T]."""
    decisions = np.asarray(decisions, dtype=np.int64)
    return np.stack([self._mask(decisions, t) for t in range(self.num_steps)])

  def forward(self, decisions, masks=None):
    """Teacher-forced pass over decision lists [B, T].

    Args:
      decisions: int [B, T].
      masks: `masks(decisions)`, if already computed.
    Returns:
      (log-probabilities [B], cache for `gradient`).
    """
    decisions = np.asarray(decisions, dtype=np.int64)
    batch, steps = decisions.shape
    hs = self.hidden_size
    p = self.params
    rows = np.concatenate([np.zeros((batch, 1), dtype=np.int64),
                           self.row_offset[:-1][None, :] + decisions[:, :-1]],
                          axis=1).T  # [T, B]
    xw = p["wx"][rows]  # [T, B, 4H]
    t_all = np.empty((steps, batch, 4 * hs))
    c_all = np.empty((steps + 1, batch, hs))
    tc_all = np.empty((steps, batch, hs))
    h_all = np.empty((steps + 1, batch, hs))
    c_all[0] = 0.0
    h_all[0] = 0.0
    for t in range(steps):
      t_all[t], c_all[t + 1], tc_all[t], h_all[t + 1] = self._cell(
          xw[t] + h_all[t] @ p["wh"], c_all[t])
    logits = np.matmul(h_all[1:], p["wo"]) + p["bo"][:, None]
    if masks is None:
      masks = self.masks(decisions)
    logits = np.where(masks, logits, -np.inf)
    logits -= logits.max(axis=2, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
    chosen = np.take_along_axis(log_p, decisions.T[:, :, None], axis=2)[..., 0]
    cache = (decisions, rows, t_all, c_all, tc_all, h_all, log_p)
    return chosen.sum(axis=0), cache

  def gradient(self, cache, weights):
    """Gradient of sum_b weights_b * log pi(decisions_b) (dict like params).

    Args:
      cache: from `forward`.
      weights: [B] floats.
    """
    decisions, rows, t_all, c_all, tc_all, h_all, log_p = cache
    steps, batch, _ = log_p.shape
    hs = self.hidden_size
    p = self.params
    w = np.asarray(weights, dtype=float)[None, :, None]
    # d/dlogits of w log softmax: w (onehot - probs); probs are 0 where masked.
    dlogits = -w * np.exp(log_p)
    np.put_along_axis(
        dlogits, decisions.T[:, :, None],
        np.take_along_axis(dlogits, decisions.T[:, :, None], axis=2) + w,
        axis=2)
    grads = {"wo": np.matmul(h_all[1:].transpose(0, 2, 1), dlogits),
             "bo": dlogits.sum(axis=1)}
    dh_out = np.matmul(dlogits, p["wo"].transpose(0, 2, 1))
    # dz = (dc, dc, dh, dc) * factor: input gate dc g, forget dc c_prev,
    # output dh tanh(c), candidate dc i, each times its activation's slope.
    slope = 1.0 - t_all * t_all
    slope[:, :, :3 * hs] *= 0.5
    gates = t_all[:, :, :3 * hs] * 0.5 + 0.5
    factor = np.concatenate([t_all[:, :, 3 * hs:], c_all[:-1], tc_all,
                             gates[:, :, :hs]], axis=2) * slope
    out_factor = gates[:, :, 2 * hs:] * (1.0 - tc_all * tc_all)
    forget = gates[:, :, hs:2 * hs]
    dz_all = np.empty_like(t_all)
    dh = np.zeros((batch, hs))
    dc = np.zeros((batch, hs))
    wh_t = p["wh"].T
    for t in reversed(range(steps)):
      dh = dh_out[t] + dh
      dc = dh * out_factor[t] + dc
      dz = np.concatenate([dc, dc, dh, dc], axis=1) * factor[t]
      dz_all[t] = dz
      dh = dz @ wh_t
      dc = dc * forget[t]
    grads["wh"] = h_all[:-1].reshape(-1, hs).T @ dz_all.reshape(-1, 4 * hs)
    # Sum the rows' gradients by row index (sorted runs; np.add.at is slow).
    rows = rows.reshape(-1)
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    wx = np.zeros_like(p["wx"])
    wx[rows[starts]] = np.add.reduceat(dz_all.reshape(-1, 4 * hs)[order],
                                       starts, axis=0)
    grads["wx"] = wx
    return grads


class PolicyGradientController(base.Controller):
  """The LSTM controller trained by REINFORCE or PPO (module docstring).

  Args:
    space: a SearchSpace.
    seed: int; equal seeds give equal suggestions for equal updates.
    algorithm: "reinforce" or "ppo".
    hidden_size, learning_rate, batch_size (None: the algorithm's default),
      baseline_decay, ppo_clip, ppo_epochs: see the module docstring.
  """

  def __init__(self, space, seed=0, algorithm="reinforce",
               hidden_size=HIDDEN_SIZE, learning_rate=LEARNING_RATE,
               batch_size=None, baseline_decay=BASELINE_DECAY,
               ppo_clip=PPO_CLIP, ppo_epochs=PPO_EPOCHS):
    if algorithm not in ("reinforce", "ppo"):
      raise ValueError(f"algorithm must be 'reinforce' or 'ppo', got "
                       f"{algorithm!r}.")
    self.space = space
    self.algorithm = algorithm
    self.learning_rate = learning_rate
    self.batch_size = BATCH_SIZE[algorithm] if batch_size is None else (
        batch_size)
    self.baseline_decay = baseline_decay
    self.ppo_clip = ppo_clip
    self.ppo_epochs = ppo_epochs if algorithm == "ppo" else 1
    self._rng = common.make_rng(seed)
    self.policy = LSTMPolicy(space, hidden_size, self._rng)
    self._adam = {k: [np.zeros_like(v), np.zeros_like(v)]
                  for k, v in self.policy.params.items()}
    self._adam_step = 0
    self._baseline = None
    self._floor = common.RewardFloor()
    self._queue = []     # [decisions, logp] sampled, not yet suggested.
    self._pending = []   # [decisions, logp] suggested, awaiting a reward.
    self._buffer = []    # [decisions, advantage, logp or None].

  def suggest(self):
    if not self._queue:
      with _one_blas_thread():
        decisions, logp = self.policy.sample(self.batch_size, self._rng)
      self._queue = [[[int(x) for x in d], float(l)]
                     for d, l in zip(decisions, logp)]
    decisions, logp = self._queue.pop(0)
    self._pending.append([decisions, logp])
    del self._pending[:-_MAX_PENDING]
    return list(decisions)

  def update(self, decisions, reward):
    decisions = [int(d) for d in decisions]
    reward = self._floor(reward)
    old_logp = None
    for i, (d, logp) in enumerate(self._pending):
      if d == decisions:
        old_logp = logp
        del self._pending[i]
        break
    if self._baseline is None:
      self._baseline = reward
    advantage = reward - self._baseline
    self._baseline = (self.baseline_decay * self._baseline +
                      (1.0 - self.baseline_decay) * reward)
    self._buffer.append([decisions, advantage, old_logp])
    if len(self._buffer) >= self.batch_size:
      with _one_blas_thread():
        self._learn()
      self._buffer = []

  def _learn(self):
    decisions = np.array([b[0] for b in self._buffer], dtype=np.int64)
    advantages = np.array([b[1] for b in self._buffer])
    n = len(self._buffer)
    masks = self.policy.masks(decisions)
    logp, cache = self.policy.forward(decisions, masks)
    if self.algorithm == "reinforce":
      self._apply(self.policy.gradient(cache, advantages / n))
      return
    # Trials this controller did not sample start at ratio 1.
    old = np.array([logp[i] if b[2] is None else b[2]
                    for i, b in enumerate(self._buffer)])
    for epoch in range(self.ppo_epochs):
      if epoch:
        logp, cache = self.policy.forward(decisions, masks)
      ratio = np.exp(logp - old)
      # The clipped objective's gradient is the plain one where the ratio is
      # inside the clip range (or outside on the side that lowers it), else 0.
      active = np.where(advantages >= 0, ratio < 1.0 + self.ppo_clip,
                        ratio > 1.0 - self.ppo_clip)
      weights = np.where(active, advantages * ratio, 0.0) / n
      if not weights.any():
        break
      self._apply(self.policy.gradient(cache, weights))

  def _apply(self, grads):
    """One Adam step of gradient ascent, after clipping the global norm."""
    norm = np.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    scale = min(1.0, GRAD_CLIP_NORM / norm) if norm > 0 else 1.0
    self._adam_step += 1
    b1, b2 = _ADAM_BETAS
    for k, g in grads.items():
      g = g * scale
      m, v = self._adam[k]
      m *= b1
      m += (1 - b1) * g
      v *= b2
      v += (1 - b2) * g * g
      m_hat = m / (1 - b1 ** self._adam_step)
      v_hat = v / (1 - b2 ** self._adam_step)
      self.policy.params[k] += self.learning_rate * m_hat / (
          np.sqrt(v_hat) + _ADAM_EPS)

  def get_state(self):
    arrays = lambda d: {k: v.tolist() for k, v in d.items()}
    return {
        "algorithm": self.algorithm,
        "rng": common.rng_state(self._rng),
        "params": arrays(self.policy.params),
        "adam_m": {k: v[0].tolist() for k, v in self._adam.items()},
        "adam_v": {k: v[1].tolist() for k, v in self._adam.items()},
        "adam_step": self._adam_step,
        "baseline": self._baseline,
        "floor": self._floor.get_state(),
        "queue": self._queue, "pending": self._pending,
        "buffer": self._buffer}

  def set_state(self, state):
    if state["algorithm"] != self.algorithm:
      raise ValueError(f"State of a {state['algorithm']} controller given to "
                       f"a {self.algorithm} one.")
    common.set_rng_state(self._rng, state["rng"])
    for k in LSTMPolicy.NAMES:
      shape = self.policy.params[k].shape
      value = np.array(state["params"][k], dtype=float)
      if value.shape != shape:
        raise ValueError(f"State parameter {k} has shape {value.shape}; this "
                         f"space's controller has {shape}.")
      self.policy.params[k] = value
      self._adam[k] = [np.array(state["adam_m"][k], dtype=float),
                       np.array(state["adam_v"][k], dtype=float)]
    self._adam_step = state["adam_step"]
    self._baseline = state["baseline"]
    self._floor.set_state(state["floor"])
    self._queue = [[list(d), float(l)] for d, l in state["queue"]]
    self._pending = [[list(d), float(l)] for d, l in state["pending"]]
    self._buffer = [[list(d), float(a), None if l is None else float(l)]
                    for d, a, l in state["buffer"]]
