"""The paper's math (GAE, PPO losses, thought KL, step log-prob, TIES) and the types that cross between
roles (batch.py: transitions, labels; answer.py: the answer format). Imports nothing else of the project."""
