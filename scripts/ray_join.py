"""``ray start`` for a node that joins a head (scripts/ray_worker.sh runs it), keeping a loopback head address.

Ray 2.60 replaces a head address of 127.0.0.1 or localhost by this machine's outward address before it
connects (``resolve_ip_for_localhost``), so a node on the same machine cannot reach a head that listens on
127.0.0.1 only (scripts/ray_head.sh); and the setting that stops the swap (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)
also makes ``ray start --address`` refuse to join. This keeps the address as given and is otherwise
``ray start``; a head address that is not loopback (a real cluster) is used as given either way.
"""

import sys

import ray._private.services as services
from ray.scripts.scripts import main

if not hasattr(services, "resolve_ip_for_localhost"):
    sys.exit("scripts/ray_join.py: this Ray has no services.resolve_ip_for_localhost (written for Ray 2.60)")
services.resolve_ip_for_localhost = lambda host: host
sys.argv = ["ray", *sys.argv[1:]]
sys.exit(main())
