"""The top layer: the driver (Algorithm 1), the roles it drives, Ray (remote.py: the only ray.remote
wrappers), run folders and checkpoints, and the command lines (launch, sft, experiment, demo)."""
