"""SFT warm start from the scripted experts (cluster/warm_start.py does the work).

python -m cluster.sft --config configs/sft_ezpoints.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import sys

from cluster import warm_start
from configs.loader import parse_cli


def main(argv: list[str] | None = None) -> int:
    _, cfg = parse_cli(argparse.ArgumentParser(description="SFT warm start from scripted experts"), argv)
    warm_start.run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
