#!/usr/bin/env bash
# A Ray head on this machine for `ray job submit`, in the foreground: Ctrl-C stops it, and only it
# (`ray stop` would stop every Ray cluster on the machine).
#   scripts/ray_head.sh [ray start options: --port=6379 --dashboard-port=8265 --num-cpus=N ...]
# Every port it opens is on 127.0.0.1 (DESIGN.md section 5): --node-ip-address and --dashboard-host are
# not enough, Ray swaps 127.0.0.1 for the machine's address and listens there too unless
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. A job runs `python` from the head's PATH, so the project's venv
# comes first. Token auth and usage stats are off, as for a cluster the launcher starts (cluster/remote.py).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$root/.venv/bin:$PATH"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
exec ray start --head --block --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --include-dashboard=true "$@"
