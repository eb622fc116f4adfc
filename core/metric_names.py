"""Metric names, in one place (STYLE.md 12). Every name is namespaced and stable across versions; the
roles that measure a thing and the readers (progress line, run summary, plots, experiment tables) all
use these constants.

- ``rollout/``: training episodes that finished this iteration (``summarize``'s keys: return, success,
  length, format validity, success on solvable hands: biased towards quick episodes, since a win ends
  early and a loss runs to the step cap), success and return over the last ``train.episode_window`` ended
  episodes with their count (``window_*``), the share of this iteration's episodes still running at its
  end (``running_share``), the step counts, the policy version published at
  the end of the iteration, ``stale_steps`` (steps sampled by an older policy than the one just
  updated: 0 in the synchronous loop), ``staleness`` and ``staleness_max`` (how many versions behind
  the learning policy a step's sampling policy was: at most ``train.max_staleness``), rollout actor
  restarts, and ``logprob_gap`` (how far the engine's log-probs of the sampled tokens are from the
  learner's, which PPO uses);
- ``losses/``: the learner's (policy, value, entropy, clip fraction, approx KL, grad norm, lr, and with
  ``train.max_staleness`` > 0 decoupled PPO's ``behaviour_weight`` and the share of it capped, ...);
- ``teacher/``: KL penalty, merge time, checkpoints in the buffer, merged version, SFT labels, restarts,
  ``skipped`` (1 when the iteration trained without guidance because the teacher was being rebuilt) and
  ``unguided_iterations`` (how many such iterations so far);
- ``eval/``: held-out episodes of the student, and ``eval/teacher_*`` of the merged teacher as a policy;
- ``time/``: seconds per phase (cluster/metrics.py's PHASES) and per iteration.
"""

from __future__ import annotations

ROLLOUT, LOSSES, TEACHER, EVAL, EVAL_TEACHER, TIME = (
    "rollout/",
    "losses/",
    "teacher/",
    "eval/",
    "eval/teacher_",
    "time/",
)

ITERATION = "iteration"

ENV_STEPS = "rollout/env_steps"
TOTAL_ENV_STEPS = "rollout/total_env_steps"
POLICY_VERSION = "rollout/policy_version"
SUCCESS = "rollout/success"
RETURN = "rollout/return"
WINDOW_SUCCESS = "rollout/window_success"  # over the last train.episode_window ended episodes
WINDOW_RETURN = "rollout/window_return"
WINDOW_EPISODES = "rollout/window_episodes"  # how many ended episodes the window holds so far
RUNNING_SHARE = "rollout/running_share"  # still running at the end / (ended this iteration + still running)
STEP_FORMAT_VALID = "rollout/step_format_valid"
STEP_REWARD = "rollout/step_reward"
STALE_STEPS = "rollout/stale_steps"
STALENESS = "rollout/staleness"  # mean versions between the policy that sampled a step and the one learning it
STALENESS_MAX = "rollout/staleness_max"
ROLLOUT_RESTARTS = "rollout/restarts"
LOGPROB_GAP = "rollout/logprob_gap"  # mean |engine - learner| step log-prob (the learner's are used)
LOGPROB_GAP_MAX = "rollout/logprob_gap_max"
TOKEN_LOGPROB_GAP = "rollout/token_logprob_gap"  # mean |engine - learner| per sampled token

POLICY_LOSS = "losses/policy"
VALUE_LOSS = "losses/value"
ENTROPY = "losses/entropy"
EXPLAINED_VARIANCE = "losses/explained_variance"
ADVANTAGE_MEAN = "losses/advantage_mean"
LR = "losses/lr"
OPTIMIZER_STEPS = "losses/optimizer_steps"
BEHAVIOUR_WEIGHT = "losses/behaviour_weight"  # mean pi_prox / pi_behaviour over stale steps (decoupled PPO)
BEHAVIOUR_WEIGHT_CAPPED = "losses/behaviour_weight_capped"  # share of stale steps whose weight was capped

TEACHER_KL = "teacher/kl"
MERGE_SECONDS = "teacher/merge_seconds"
TEACHER_CHECKPOINTS = "teacher/checkpoints"
MERGED_VERSION = "teacher/merged_version"
SFT_LABELS = "teacher/labels"
TEACHER_RESTARTS = "teacher/restarts"
TEACHER_SKIPPED = "teacher/skipped"
UNGUIDED_ITERATIONS = "teacher/unguided_iterations"

EVAL_SUCCESS = "eval/success"
EVAL_RETURN = "eval/return"
EVAL_SUCCESS_SOLVABLE = "eval/success_solvable"
EVAL_FORMAT_VALID = "eval/format_valid"
EVAL_TEACHER_SUCCESS = "eval/teacher_success"
EVAL_TEACHER_RETURN = "eval/teacher_return"

ITERATION_SECONDS = "time/iteration"
EVAL_SECONDS = "time/eval"
