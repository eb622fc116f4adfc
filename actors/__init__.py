"""Rollout side: RolloutWorker (vectorised envs + policy engine), engines, prompts and parsing. Arrives with issue 3."""
