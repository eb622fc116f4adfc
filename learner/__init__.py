"""PPO on LoRA: GAE, losses, KL estimators, the policy model and the Learner. Arrives with issue 4."""
