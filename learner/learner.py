"""The Learner: PPO on LoRA + value head over rollout batches, with GTR-Turbo's shaping.

A plain class (no Ray). One ``update`` is the paper's learning phase (DESIGN.md sections 2 and 6):

1. one pass without gradients over every sampled step, under the policy that sampled it (the version
   the learner published last: the loop is on-policy): each step's prompt encoded and its image
   features computed once for the whole update, the log-prob of every sampled token (PPO's old
   log-probs and the student side of the teacher's KL), the values, and the entropy (logged). The
   rollout engine's own log-probs only feed ``rollout/logprob_gap``: a bf16 or vLLM engine differs from
   the learner by more than PPO's clip allows over hundreds of tokens (issue 17);
2. GAE over each env's steps on the env rewards (gamma 0.9, lambda 0.95);
3. the format reward added to that step's advantage and return after GAE (GTR-Turbo);
4. with KL guidance, the teacher's log-probs of the same tokens make the per-step thought KL, which
   shapes the advantage: A' = A - beta * KL;
5. advantages normalised over the update; ``epochs`` passes of shuffled minibatches, each the mean of
   micro-batches (gradient accumulation): clipped policy loss on the step log-prob
   ``lambda * thought + action``, clipped value loss, plus for SFT guidance the cross-entropy of one
   replayed teacher label on its thought tokens; grad-norm clip; Adam with cosine decay. The tokens
   every row of a micro-batch starts with (the instruction) go through the model once
   (models/scoring.py ``share_prefix``); statistics stay on the device until one read per minibatch.

Asynchronous loop (``train.max_staleness`` = k > 0, issue 19): a batch may have been sampled by any of
the k versions before the learner's. The learner keeps the adapters of its last k versions; the pass of
step 1 gives the proximal policy (the learner's own at the update's start: the ratio, its clip, the KL's
student side, the values), and one more pass per older version present, with that version's adapter
swapped in, gives the behaviour policy's log-probs. Decoupled PPO (core/ppo_loss.py) weights each step by
``pi_prox / pi_behaviour``, capped at ``learner.behaviour_weight_cap``: the trust region stays around the
policy being updated, however stale the batch, and the weight corrects for who sampled it. The rollout
engine's own log-probs are not used for this, for the reason given in step 1. With every step on-policy
(k = 0) nothing of this runs, and the update is bit for bit the synchronous one.

A non-finite loss or gradient norm stops the update before its optimizer step, and so do non-finite
weights at its end (``NonFiniteError``): the run stops at its last good checkpoint instead of training
on, or finishing, with NaN weights.

Its randomness (minibatch order, LoRA dropout) comes from its own saved RNG state, so a learner
restored from ``state_dict`` makes the very next update bit for bit (CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from configs.schema import LearnerConfig
from core import metric_names as names
from core.batch import Batch, Observation, SFTLabel, Transition
from core.gae import gae
from core.kl import thought_kl
from core.logprob import step_logprob
from core.ppo_loss import explained_variance, policy_loss, value_loss
from learner.policy_model import PolicyModel
from models.engines.base import prompt_input
from models.lora import LoraSettings
from models.processing import EncodedPrompt


class NonFiniteError(ArithmeticError):
    """A loss, gradient norm or weight of the learner is NaN or infinite."""


@dataclass
class Sampled:
    """What one update knows of its sampled steps before the first epoch (one pass, no gradients)."""

    prompts: list[EncodedPrompt]  # encoded once; pixels dropped where the image features are kept
    images: list[torch.Tensor | None] | None  # the frozen vision tower's output per prompt (None: it trains)
    token_logprobs: torch.Tensor  # (n, W) the learner's log-prob of every sampled token, 0 past the end
    thought: torch.Tensor  # (n, W) thought-token mask
    action: torch.Tensor  # (n, W) action-token mask
    logp: torch.Tensor  # (n,) step log-probs: PPO's old log-probs
    values: torch.Tensor  # (n,)
    entropy: float  # mean per-token entropy of the sampling policy


@dataclass
class Behaviour:
    """The log-probs of the sampled tokens under the policy that sampled each step (asynchronous loop)."""

    token_logprobs: torch.Tensor  # (n, W); the rows of on-policy steps are the proximal pass's
    logp: torch.Tensor  # (n,) step log-probs


class Learner:
    def __init__(
        self,
        cfg: LearnerConfig,
        model_path: str,
        lora: LoraSettings,
        temperature: float,
        thought_weight: float,
        total_updates: int,
        updates_per_iteration: int,
        kl_coef: float = 1.0,
        kl_estimator: str = "k1_clip",
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
        max_staleness: int = 0,
    ):
        self.cfg, self.temperature, self.thought_weight = cfg, temperature, thought_weight
        self.max_staleness = max_staleness
        self.kl_coef, self.kl_estimator = kl_coef, kl_estimator
        self.device = torch.device(device)
        # LoRA dropout draws from the device's generator: on a GPU its state is the learner's too.
        self._cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=self._cuda):
            torch.manual_seed(seed)
            self.policy = PolicyModel(model_path, lora, dtype, device, cfg.gradient_checkpointing)
            self._rng_state = self._get_rng()
        self.processor = self.policy.processor
        self.optimizer = torch.optim.Adam(self.policy.trainable_parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        total_steps = max(1, total_updates * updates_per_iteration)
        # Cosine decay to min_lr_ratio over the run's updates, no warmup (the same factors, bit for bit,
        # as the hand-written schedule it replaced).
        self.scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            self.optimizer, 0, total_steps, min_lr_rate=cfg.min_lr_ratio
        )
        self.version = 0
        # version -> adapter of the versions a stale batch may come from (train.max_staleness of them)
        self.history: dict[int, dict[str, torch.Tensor]] = {}
        self._remember(self.policy.adapter())

    # ------------------------------------------------------------------ the update

    def update(
        self,
        batches: Sequence[Batch],
        teacher_logprobs: Sequence[Sequence[float]] | None = None,
        sft_labels: Sequence[SFTLabel] = (),
    ) -> dict[str, float]:
        """One PPO update over the workers' batches; ``teacher_logprobs`` holds the teacher's log-prob of
        every sampled token, one list per transition in batch order (KL guidance)."""
        with torch.random.fork_rng(devices=self._cuda):
            self._set_rng(self._rng_state)
            stats = self._update(batches, teacher_logprobs, sft_labels)
            self._rng_state = self._get_rng()
        return stats

    def _get_rng(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self._cuda:
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["cpu"])
        if self._cuda and "cuda" in state:  # a checkpoint written on a CPU learner has none
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def _update(self, batches, teacher_logprobs, sft_labels) -> dict[str, float]:
        cfg = self.cfg
        transitions = [t for b in batches for t in b.transitions]
        sampled = self._sample_pass(transitions)
        behaviour = self._behaviour_pass(transitions, sampled)  # None: every step sampled by this policy
        weights = None
        if behaviour is not None:
            weights = (sampled.logp - behaviour.logp).exp().clamp(max=self.cfg.behaviour_weight_cap)
        old_values, advantages, returns, gae_adv = self._advantages(batches, sampled.values)
        kl = None
        if teacher_logprobs is not None:
            kl = self._thought_kl(transitions, sampled, teacher_logprobs)
            advantages = advantages - self.kl_coef * kl
        if cfg.normalize_advantages and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        totals: dict[str, float] = {}
        steps = 0
        n = len(transitions)
        for _ in range(cfg.epochs):
            order = torch.randperm(n).tolist()
            for start in range(0, n, cfg.minibatch_size):
                indices = order[start : start + cfg.minibatch_size]
                label = sft_labels[int(torch.randint(len(sft_labels), ()).item())] if sft_labels else None
                mb = self._minibatch(transitions, sampled, indices, old_values, advantages, returns, label, weights)
                for key, value in mb.items():
                    totals[key] = totals.get(key, 0.0) + value
                steps += 1
        self._check_weights()
        stats = {names.LOSSES + k: v / steps for k, v in totals.items()}
        stats |= {
            names.ENTROPY: sampled.entropy,
            names.EXPLAINED_VARIANCE: explained_variance(old_values, returns),
            names.ADVANTAGE_MEAN: gae_adv.mean().item(),
            names.LR: self.scheduler.get_last_lr()[0],
            names.OPTIMIZER_STEPS: float(steps),
        }
        stats |= _logprob_gap(transitions, behaviour or sampled)  # the engine against the policy that sampled
        stats |= self._staleness(transitions, sampled, behaviour)
        if kl is not None:
            stats[names.TEACHER_KL] = kl.mean().item()
        return stats

    @torch.no_grad()
    def _sample_pass(self, transitions: Sequence[Transition]) -> Sampled:
        """Step 1 of the update: every sampled step scored once, without gradients or dropout."""
        self.policy.eval()
        prompts, images, logprobs, values, entropy, tokens = [], [], [], [], 0.0, 0  # sums: tensors, read once
        for start in range(0, len(transitions), self.cfg.micro_batch_size):
            chunk = transitions[start : start + self.cfg.micro_batch_size]
            encoded = self._encode([t.observation for t in chunk])
            features = self.policy.image_features(encoded)
            if features is not None:
                encoded = [dataclasses.replace(e, pixel_values=None) for e in encoded]
                images.extend(features)
            out, value = self.policy.evaluate(
                encoded,
                [t.response_ids for t in chunk],
                self.temperature,
                images=features,
                share_prefix=self.cfg.share_prefix,
                entropy=True,
            )
            prompts.extend(encoded)
            rows = out.logprobs.cpu()
            logprobs.extend(row[: len(t.response_ids)] for row, t in zip(rows, chunk, strict=True))
            values.append(value.cpu())
            entropy = entropy + out.entropy.sum()
            tokens = tokens + out.mask.sum()
        width = max((len(t.response_ids) for t in transitions), default=0)
        token_logprobs = _padded(logprobs, width)
        thought, action = _masks(transitions, width, torch.device("cpu"))
        return Sampled(
            prompts=prompts,
            images=images if len(images) == len(prompts) else None,
            token_logprobs=token_logprobs,
            thought=thought,
            action=action,
            logp=step_logprob(token_logprobs, thought, action, self.thought_weight),
            values=torch.cat(values) if values else torch.zeros(0),
            entropy=float(entropy / max(float(tokens), 1.0)),
        )

    @torch.no_grad()
    def _behaviour_pass(self, transitions: Sequence[Transition], sampled: Sampled) -> Behaviour | None:
        """The log-probs of the sampled tokens under the policy that sampled each step (its adapter swapped in
        for the pass), for the steps an older version sampled; None when there is none."""
        stale = sorted({t.policy_version for t in transitions if t.policy_version != self.version})
        if not stale or not self.max_staleness:
            return None
        missing = [v for v in stale if v not in self.history]
        if missing:
            raise ValueError(
                f"steps sampled by policy version(s) {missing}, but the learner (version {self.version}) keeps "
                f"versions {sorted(self.history)} (train.max_staleness={self.max_staleness}): a batch older "
                "than the staleness bound reached the learner"
            )
        token_logprobs = sampled.token_logprobs.clone()
        current = self.policy.adapter()
        self.policy.eval()
        try:
            for version in stale:
                self.policy.load_adapter(self.history[version])
                rows = [i for i, t in enumerate(transitions) if t.policy_version == version]
                for start in range(0, len(rows), self.cfg.micro_batch_size):
                    chunk = rows[start : start + self.cfg.micro_batch_size]
                    out, _ = self.policy.evaluate(
                        [sampled.prompts[i] for i in chunk],
                        [transitions[i].response_ids for i in chunk],
                        self.temperature,
                        images=[sampled.images[i] for i in chunk] if sampled.images is not None else None,
                        share_prefix=self.cfg.share_prefix,
                    )
                    for row, i in zip(out.logprobs.cpu(), chunk, strict=True):
                        width = len(transitions[i].response_ids)
                        token_logprobs[i, :width] = row[:width]
        finally:
            self.policy.load_adapter(current)
        logp = step_logprob(token_logprobs, sampled.thought, sampled.action, self.thought_weight)
        return Behaviour(token_logprobs=token_logprobs, logp=logp)

    def _staleness(self, transitions, sampled: Sampled, behaviour: Behaviour | None) -> dict[str, float]:
        """How many versions behind this update's policy the sampling policies were, and decoupled PPO's weights."""
        if not transitions:
            return {}
        behind = [self.version - t.policy_version for t in transitions]
        stats = {names.STALENESS: sum(behind) / len(behind), names.STALENESS_MAX: float(max(behind))}
        if behaviour is not None:
            stale = torch.tensor([b > 0 for b in behind])
            raw = (sampled.logp - behaviour.logp).exp()[stale]
            stats[names.BEHAVIOUR_WEIGHT] = raw.clamp(max=self.cfg.behaviour_weight_cap).mean().item()
            stats[names.BEHAVIOUR_WEIGHT_CAPPED] = (raw > self.cfg.behaviour_weight_cap).float().mean().item()
        return stats

    def _thought_kl(self, transitions, sampled: Sampled, teacher_logprobs) -> torch.Tensor:
        """(n,) per-step thought KL between the learner's log-probs of the sampled tokens and the teacher's."""
        if len(teacher_logprobs) != len(transitions):
            raise ValueError(f"teacher log-probs for {len(teacher_logprobs)} transitions, {len(transitions)} sampled")
        for t, lp in zip(transitions, teacher_logprobs, strict=True):
            if len(lp) != len(t.response_ids):
                raise ValueError(f"teacher log-probs of {len(lp)} tokens for a response of {len(t.response_ids)}")
        teacher = _padded([torch.tensor(lp, dtype=torch.float32) for lp in teacher_logprobs], sampled.thought.shape[1])
        return thought_kl(sampled.token_logprobs, teacher, sampled.thought, self.kl_estimator)

    def _advantages(self, batches, values_flat: torch.Tensor | None = None):
        """Old values, shaped advantages, returns and the raw GAE advantages, flat in batch order
        (``values_flat``: the sampled steps' values when already computed)."""
        cfg = self.cfg
        values_all, adv_all, ret_all, gae_all = [], [], [], []
        offset = 0
        for batch in batches:
            rounds, k = len(batch.transitions) // batch.num_envs, batch.num_envs
            if values_flat is None:
                values = self._values([t.observation for t in batch.transitions]).view(rounds, k)
            else:
                values = values_flat[offset : offset + len(batch.transitions)].view(rounds, k)
            offset += len(batch.transitions)
            last_done = torch.tensor([t.done for t in batch.transitions[-k:]])
            next_values = self._values(batch.next_observations) * ~last_done
            rewards = _grid([t.env_reward for t in batch.transitions], rounds, k)
            dones = _grid([t.done for t in batch.transitions], rounds, k).bool()
            advantages, returns = gae(rewards, values, dones, next_values, cfg.gamma, cfg.gae_lambda)
            fmt = _grid([t.format_reward for t in batch.transitions], rounds, k)
            values_all.append(values.flatten())
            gae_all.append(advantages.flatten())
            adv_all.append((advantages + fmt).flatten())  # GTR-Turbo: format reward added after GAE
            ret_all.append((returns + fmt).flatten())
        return torch.cat(values_all), torch.cat(adv_all), torch.cat(ret_all), torch.cat(gae_all)

    @torch.no_grad()
    def _values(self, observations: Sequence[Observation]) -> torch.Tensor:
        self.policy.eval()
        out = []
        for start in range(0, len(observations), self.cfg.micro_batch_size):
            chunk = observations[start : start + self.cfg.micro_batch_size]
            prompts = self._encode(chunk)
            out.append(self.policy.evaluate(prompts, [[] for _ in chunk], self.temperature)[1].cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _minibatch(
        self, transitions, sampled: Sampled, indices, old_values, advantages, returns, label, weights=None
    ) -> dict[str, float]:
        cfg = self.cfg
        self.policy.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for start in range(0, len(indices), cfg.micro_batch_size):
            micro = indices[start : start + cfg.micro_batch_size]
            weight = len(micro) / len(indices)
            images = [sampled.images[i] for i in micro] if sampled.images is not None else None
            out, values = self.policy.evaluate(
                [sampled.prompts[i] for i in micro],
                [transitions[i].response_ids for i in micro],
                self.temperature,
                images=images,
                share_prefix=self.cfg.share_prefix,
            )
            width = out.logprobs.shape[1]
            idx = torch.tensor(micro)
            thought, action = (m[idx, :width].to(self.device) for m in (sampled.thought, sampled.action))
            new_logp = step_logprob(out.logprobs, thought, action, self.thought_weight)
            pg, pg_stats = policy_loss(
                new_logp,
                sampled.logp[idx].to(self.device),
                advantages[idx].to(self.device),
                cfg.clip,
                weights[idx].to(self.device) if weights is not None else None,
            )
            vf = value_loss(values, old_values[idx].to(self.device), returns[idx].to(self.device), cfg.value_clip)
            ((pg + cfg.value_coef * vf) * weight).backward()
            for key, value in (("policy", pg), ("value", vf), *pg_stats.items()):
                sums[key] = sums.get(key, 0.0) + value.detach() * weight
        if label is not None:
            sft = self._sft_loss(label)
            (cfg.sft_coef * sft).backward()
            sums["sft"] = sft.detach()
        sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), cfg.max_grad_norm)
        read = dict(zip(sums, torch.stack([v.float() for v in sums.values()]).tolist(), strict=True))  # one sync
        if not all(math.isfinite(value) for value in read.values()):
            shown = ", ".join(f"{key} {value:.4g}" for key, value in read.items() if key != "clip_fraction")
            raise NonFiniteError(
                f"non-finite PPO minibatch ({shown}); its optimizer step was not taken. "
                "Lower learner.lr or learner.max_grad_norm, or look at the rewards and the teacher's KL"
            )
        self.optimizer.step()
        self.scheduler.step()
        return read

    def _check_weights(self) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.policy.trainable_parameters()):
            lr = self.scheduler.get_last_lr()[0]
            raise NonFiniteError(f"the LoRA or value-head weights are no longer finite after an update at lr {lr:.3g}")

    def _sft_loss(self, label: SFTLabel) -> torch.Tensor:
        out, _ = self.policy.evaluate(self._encode([label.observation]), [label.token_ids], self.temperature)
        mask = torch.tensor([label.loss_mask], device=self.device)
        return -(out.logprobs * mask).sum() / mask.sum().clamp(min=1)

    def _encode(self, observations: Sequence[Observation]):
        return self.processor.encode(
            [(o.text, o.tail) for o in observations], [prompt_input(o).image for o in observations]
        )

    # ------------------------------------------------------------------ publishing and state

    def publish(self) -> tuple[int, dict[str, torch.Tensor]]:
        """A new adapter version: (version, LoRA state dict on CPU)."""
        self.version += 1
        adapter = self.policy.adapter()
        self._remember(adapter)
        return self.version, adapter

    def _remember(self, adapter: dict[str, torch.Tensor]) -> None:
        """Keep the current version's adapter while a stale batch may still come from it."""
        if self.max_staleness:
            self.history[self.version] = adapter
            for version in [v for v in self.history if v < self.version - self.max_staleness]:
                del self.history[version]

    def state_dict(self) -> dict:
        """Everything the next update depends on, as copies (an optimizer's own state_dict aliases
        its live moment tensors, which the next update would change under a saved checkpoint)."""
        return {
            "adapter": self.policy.adapter(),
            "value_head": {k: v.detach().cpu().clone() for k, v in self.policy.value_head.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
            "version": self.version,
            "rng": {k: v.clone() for k, v in self._rng_state.items()},
            "history": dict(self.history),  # adapters are never changed in place once kept
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_adapter(state["adapter"])
        self.policy.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
        self.version = state["version"]
        self.history = dict(state.get("history", {})) if self.max_staleness else {}  # absent before issue 19
        if self.max_staleness and self.version not in self.history:
            self._remember(state["adapter"])
        rng = state["rng"]
        rng = {"cpu": rng} if isinstance(rng, torch.Tensor) else rng  # checkpoints from before the CUDA state
        self._rng_state = {k: v.clone() for k, v in rng.items()}


def _grid(values: Sequence[float], rounds: int, k: int) -> torch.Tensor:
    """Round-major per-transition values as (rounds, K): column k is env k's steps in time order."""
    return torch.tensor(values, dtype=torch.float32).view(rounds, k)


def _padded(rows: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """Rows of different lengths as one (n, width) tensor, 0 past each row's end."""
    out = torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _logprob_gap(transitions: Sequence[Transition], sampled: Sampled) -> dict[str, float]:
    """How far the rollout engine's log-probs are from the learner's: per step (mean and max |difference|
    of the step log-probs) and per token (mean |difference|)."""
    if not transitions:
        return {}
    engine_steps = torch.tensor([t.old_logprob for t in transitions], dtype=torch.float32)
    step_gap = (engine_steps - sampled.logp).abs()
    engine_tokens = _padded(
        [torch.tensor(t.old_logprobs, dtype=torch.float32) for t in transitions], sampled.token_logprobs.shape[1]
    )
    mask = _padded([torch.ones(len(t.response_ids)) for t in transitions], sampled.token_logprobs.shape[1]).bool()
    token_gap = (engine_tokens - sampled.token_logprobs).abs()[mask]
    return {
        names.LOGPROB_GAP: step_gap.mean().item(),
        names.LOGPROB_GAP_MAX: step_gap.max().item(),
        names.TOKEN_LOGPROB_GAP: token_gap.mean().item() if len(token_gap) else 0.0,
    }


def _masks(chosen: Sequence[Transition], width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    thought = torch.zeros((len(chosen), width), dtype=torch.bool)
    action = torch.zeros_like(thought)
    for row, t in enumerate(chosen):
        thought[row, : len(t.thought_mask)] = torch.tensor(t.thought_mask, dtype=torch.bool)
        action[row, : len(t.action_mask)] = torch.tensor(t.action_mask, dtype=torch.bool)
    return thought.to(device), action.to(device)
