"""Inference-time win-rate evaluation (paper Sec. 3 win rate; Sec. 5 evaluation): the exact estimator and
the evaluator CLI ``python -m infalign_jax.evaluate`` (docs/evaluate.md).

- :func:`inference_win_rate` (:mod:`~infalign_jax.evaluate.estimator`): per-prompt win rate of T(π) over
  T(π_ref) from M samples per prompt of each side, exact over all N-subsets.
- :mod:`~infalign_jax.evaluate.report`: bootstrap CIs over prompts, paired differences, the KL estimate,
  the table and the plots.
- :func:`run_evaluation` / :class:`EvalConfig` (:mod:`~infalign_jax.evaluate.command`): sampling, judging,
  caching and the report, for a driver; the CLI is a thin shell over them.
"""

from infalign_jax.evaluate.command import EvalConfig, run_evaluation
from infalign_jax.evaluate.estimator import inference_win_rate, parse_selection, selection_weights

__all__ = ["EvalConfig", "inference_win_rate", "parse_selection", "run_evaluation", "selection_weights"]
