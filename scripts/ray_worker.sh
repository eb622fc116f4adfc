#!/usr/bin/env bash
# Another Ray node joining a head, in the foreground: Ctrl-C stops it, and only it.
#   scripts/ray_worker.sh --address=HEAD_IP:6379 [ray start options: --resources='{"rollout_node": 2}' --num-cpus=N ...]
# Here, where every node is on this machine, it binds to 127.0.0.1 like scripts/ray_head.sh (DESIGN.md
# section 5); on a real cluster set NODE_IP to the machine's address, which the other nodes reach. Custom
# resources put roles on the nodes that offer them (cluster.<role>.resources.<name>=1). It is `ray start`
# through scripts/ray_join.py, which keeps a loopback head address as given (Ray would swap it for the
# machine's address, where a head on 127.0.0.1 does not listen).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$root/.venv/bin:$PATH"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
exec python "$root/scripts/ray_join.py" start --block --node-ip-address="${NODE_IP:-127.0.0.1}" "$@"
