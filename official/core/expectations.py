"""What an experiment must reach, and the model size its paper publishes.

Every experiment file declares, as gin bindings,

  expected_result.metric = 'AP'          # a key of the evaluation's metrics
  expected_result.value = 0.443          # in the evaluator's units (AP in [0, 1])
  expected_result.comparison = '>='      # '>=', '<=' or 'within'
  expected_result.tolerance = 0.01       # slack on the value (same units)
  expected_result.source = 'SpineNet paper (final version), Table 2'

and, where a paper publishes the model's size,

  published_size.name = 'RetinaNet SpineNet-49 640'   # row of the size table
  published_size.params_m = 28.5                      # millions, trainable
  published_size.multiply_adds_b = 85.4               # billions, one image
  published_size.source = 'SpineNet paper (final version), Table 2'

The trainer checks the expected result at the end of a run (train_and_eval,
eval, and continuous_eval's final step) and says whether it held in the log
and in eval_metrics.json; `python -m official.model_stats --table` prints the
published sizes beside the measured ones.

Comparisons, for a measured value m, declared value v and tolerance t:
  '>='      held when m >= v - t   (reach at least the paper's figure)
  '<='      held when m <= v + t   (e.g. a loss bound)
  'within'  held when |m - v| <= t (a range check)
A value that is NaN or missing never holds.

Figures from a paper are full-schedule results: a run stopped before the end
of its schedule (Trainer.max_train_steps, or an evaluation of an earlier
checkpoint) is still checked, and the line says that it was shortened.
A check that does not hold is information, not an error: the run's exit
status does not change (see check_expectation).
"""

import dataclasses
import math

import gin

COMPARISONS = (">=", "<=", "within")


@dataclasses.dataclass(frozen=True)
class Expectation:
  """A declared result: `metric` compared with `value` (see the module doc).

  Attributes:
    metric: name of the metric, as the task's evaluator (or, for losses, the
      trainer's final loss dict) reports it, e.g. "AP", "mask_AP",
      "top_1_accuracy", "mIoU", "total_loss".
    value: the declared figure, in the metric's units.
    comparison: one of COMPARISONS.
    tolerance: non-negative slack, in the metric's units.
    source: where the figure comes from: a paper and table, or
      "measured here: <command>" with the measured figure.
  """
  metric: str
  value: float
  comparison: str
  tolerance: float
  source: str

  def holds(self, measured):
    """True when `measured` (float or None) meets the declaration."""
    if measured is None or not math.isfinite(measured):
      return False
    if self.comparison == ">=":
      return measured >= self.value - self.tolerance
    if self.comparison == "<=":
      return measured <= self.value + self.tolerance
    return abs(measured - self.value) <= self.tolerance

  def target(self):
    """The declaration as text, e.g. ">= 0.5" or "within [0, 1]"."""
    v, t = self.value, self.tolerance
    if self.comparison == "within":
      return f"within [{_g(v - t)}, {_g(v + t)}]"
    if not t:
      return f"{self.comparison} {_g(v)}"
    sign = "-" if self.comparison == ">=" else "+"
    bound = v - t if self.comparison == ">=" else v + t
    return f"{self.comparison} {_g(bound)} ({_g(v)} {sign} {_g(t)})"


@dataclasses.dataclass(frozen=True)
class PublishedSize:
  """A model size a paper publishes (one row of `model_stats --table`).

  Attributes:
    name: the table row's label.
    params_m: trainable parameters, in millions.
    multiply_adds_b: multiply-adds of one image at inference, in billions
      (what the SpineNet and Eff-SpineNet papers call FLOPs).
    source: the paper and table.
  """
  name: str
  params_m: float
  multiply_adds_b: float
  source: str


def _g(x):
  return f"{x:.4g}"


def _number(name, value, where):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      not math.isfinite(value)):
    raise ValueError(f"{where}.{name} must be a finite number, got "
                     f"{value!r}.")
  return float(value)


def _text(name, value, where):
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{where}.{name} must be a non-empty string, got "
                     f"{value!r}.")
  return value


@gin.configurable("expected_result")
def expected_result(metric=None, value=None, comparison=">=", tolerance=0.0,
                    source=None):
  """The experiment's declared result, from its gin bindings.

  Args:
    metric, value, comparison, tolerance, source: see Expectation.

  Returns:
    An Expectation, or None when the experiment declares none (no metric).

  Raises:
    ValueError: a declared field is missing or malformed (names the binding).
  """
  if metric is None:
    return None
  where = "expected_result"
  if comparison not in COMPARISONS:
    raise ValueError(f"{where}.comparison={comparison!r}: expected one of "
                     f"{', '.join(repr(c) for c in COMPARISONS)}.")
  tolerance = _number("tolerance", tolerance, where)
  if tolerance < 0:
    raise ValueError(f"{where}.tolerance must be >= 0, got {tolerance}.")
  return Expectation(metric=_text("metric", metric, where),
                     value=_number("value", value, where),
                     comparison=comparison, tolerance=tolerance,
                     source=_text("source", source, where))


@gin.configurable("published_size")
def published_size(name=None, params_m=None, multiply_adds_b=None,
                   source=None):
  """The model size the experiment's paper publishes, from its gin bindings.

  Returns:
    A PublishedSize, or None when the experiment declares none (no name).

  Raises:
    ValueError: a declared field is missing or malformed (names the binding).
  """
  if name is None:
    return None
  where = "published_size"
  params_m = _number("params_m", params_m, where)
  multiply_adds_b = _number("multiply_adds_b", multiply_adds_b, where)
  if params_m <= 0 or multiply_adds_b <= 0:
    raise ValueError(f"{where}: params_m and multiply_adds_b must be > 0, "
                     f"got {params_m} and {multiply_adds_b}.")
  return PublishedSize(name=_text("name", name, where), params_m=params_m,
                       multiply_adds_b=multiply_adds_b,
                       source=_text("source", source, where))


def check_expectation(expectation, metrics, losses=None, step=None,
                      schedule_steps=None):
  """Checks a declaration against a run's results.

  The metric is looked up in `metrics` (the evaluation) first, then in
  `losses` (the last training losses, for loss bounds).

  Args:
    expectation: an Expectation.
    metrics: dict metric name -> float from the evaluation.
    losses: dict loss name -> float from training, or None.
    step: the evaluated checkpoint's step.
    schedule_steps: the steps of the full schedule; a smaller `step` marks
      the run as shortened.

  Returns:
    (record, line): record is the JSON-ready dict written to
    eval_metrics.json under "expected_result" ({"metric", "value", "target",
    "comparison", "tolerance", "held", "source", "step", "schedule_steps",
    "shortened"}); line is the one-line log message.
  """
  found = dict(losses or {})
  found.update({k: v for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)})
  measured = found.get(expectation.metric)
  measured = None if measured is None else float(measured)
  held = expectation.holds(measured)
  shortened = bool(step is not None and schedule_steps and
                   step < schedule_steps)
  record = {
      "metric": expectation.metric,
      "value": measured,
      "target": expectation.value,
      "comparison": expectation.comparison,
      "tolerance": expectation.tolerance,
      "held": held,
      "source": expectation.source,
      "step": step,
      "schedule_steps": schedule_steps,
      "shortened": shortened,
  }
  status = "held" if held else "NOT held"
  if measured is None:
    shown = f"{expectation.metric} was not reported (reported: " \
            f"{', '.join(sorted(found)) or 'nothing'})"
  else:
    shown = f"{expectation.metric} = {measured:.4g}"
  joint = " " if held else ", expected "
  line = (f"Expected result {status}: {shown}{joint}{expectation.target()} "
          f"({expectation.source})")
  if shortened:
    line += (f"; evaluated at step {step} of the {schedule_steps}-step "
             f"schedule, so the run was shortened")
  return record, line + "."
