"""PPO on LoRA: the policy model with its value head, the Learner, and the SFT warm start's trainer."""
