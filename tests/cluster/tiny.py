"""The smallest config that runs the whole loop: embedded:xs, NumberLine, a few envs and rounds."""

TINY = [
    "policy.path=embedded:xs",
    "policy.lora_rank=8",
    "policy.lora_alpha=16",
    "policy.max_new_tokens=24",
    "policy.temperature=1.0",
    "env.id=gym_cards/NumberLine-v0",
    "train.iterations=2",
    "train.rounds=3",
    "train.eval_every=2",
    "rollout.num_envs=4",
    "learner.minibatch_size=6",
    "learner.micro_batch_size=6",
    "learner.lr=1e-3",
    "learner.max_grad_norm=1.0",
    "eval.episodes=4",
    "eval.num_envs=4",
]

# Ray actors on the 2-core CI machine: fractions, so every actor fits beside the others.
RAY = [
    "cluster.mode=ray",
    "cluster.dashboard=false",
    "cluster.rollout.num_cpus=0.25",
    "cluster.learner.num_cpus=0.25",
    "cluster.teacher.num_cpus=0.25",
]
