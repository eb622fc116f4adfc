"""Rollout side: RolloutWorker steps K envs with one batched generate per step and returns a Batch."""
