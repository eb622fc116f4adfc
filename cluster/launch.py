"""Entry point: ``python -m cluster.launch --config configs/X.yaml [key=value ...]``.

Today this runs the training loop in local mode (one process, no Ray: cluster/driver.py). The Ray
actor system that ``ray job submit`` will run arrives with issue 5, behind the same command.
"""

from __future__ import annotations

import argparse
import sys

from cluster import driver
from configs.loader import parse_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a VLM agent with PPO and a merged-checkpoint teacher")
    _, cfg = parse_cli(parser, argv)
    driver.run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
