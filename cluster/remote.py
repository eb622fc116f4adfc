"""Ray: the only ``ray.remote`` wrappers, starting or joining a cluster, and resources from config.

Each role (cluster/roles.py) becomes one actor, named ``rollout-<i>``, ``learner`` and ``teacher``
(a restarted one gets ``-r<n>``) in the run's namespace, so the dashboard shows who is who. Its
resources are ``cluster.<role>.num_cpus`` / ``num_gpus``; an actor with GPUs runs on ``cuda``
(Ray sets which device it sees: no index is chosen here), one without on the CPU.
Every Ray port stays on 127.0.0.1 (DESIGN.md section 5), token auth and usage stats are off. A cluster
started here is gone seconds after this process ends, however it ends, SIGKILL included (cluster/reaper.py).
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps Ray from swapping 127.0.0.1 for the machine's address
}
for _key, _value in RAY_ENV.items():
    os.environ.setdefault(_key, _value)

import ray  # noqa: E402  (the environment above must be set first)
import ray.util.metrics  # noqa: E402

from cluster.reaper import Reaper  # noqa: E402
from cluster.system import ActorDied, RoleFailed, infrastructure  # noqa: E402
from configs import Config  # noqa: E402

ROLES = ("rollout", "learner", "teacher")
CLOSE_SECONDS = 10  # how long stopping an actor waits for its close()


class ResourceError(ValueError):
    """The actors ask for more than the cluster has; raised before any actor starts."""


def demands(cfg: Config) -> list[tuple[str, float, float]]:
    """(actor, CPUs, GPUs) for every actor the run starts."""
    c = cfg.cluster
    out = [(f"rollout-{i}", c.rollout.num_cpus, c.rollout.num_gpus) for i in range(cfg.train.num_workers)]
    out.append(("learner", c.learner.num_cpus, c.learner.num_gpus))
    if cfg.teacher.guidance != "none":
        out.append(("teacher", c.teacher.num_cpus, c.teacher.num_gpus))
    return out


def check_resources(cfg: Config, total: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Fail with the keys to change when the actors cannot all be placed on this cluster."""
    wanted = demands(cfg)
    c, n = cfg.cluster, cfg.train.num_workers
    for resource, key in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        need = sum(cpus if resource == "CPU" else gpus for _, cpus, gpus in wanted)
        have = total.get(resource, 0.0)
        if need > have + 1e-9:
            parts = [f"{n} rollout actors x cluster.rollout.{key}={getattr(c.rollout, key)}"]
            parts.append(f"cluster.learner.{key}={getattr(c.learner, key)}")
            if cfg.teacher.guidance != "none":
                parts.append(f"cluster.teacher.{key}={getattr(c.teacher, key)}")
            fix = "0 runs on the CPU, fractions such as 0.5 share one GPU" if resource == "GPU" else "fractions share"
            raise ResourceError(
                f"the actors ask for {need:g} {resource}s in all ({', '.join(parts)}) but the Ray cluster has "
                f"{have:g}. Lower these ({fix}), or join a cluster with more."
            )
    for name, cpus, gpus in wanted:
        role = name.split("-")[0]
        custom = dict(getattr(c, role).resources)
        if custom and not any(all(node.get(k, 0) >= v - 1e-9 for k, v in custom.items()) for node in nodes):
            raise ResourceError(
                f"{name} asks for {custom} (cluster.{role}.resources) but no node of the Ray cluster offers that; "
                "start nodes with ray start --resources='{...}', or drop the key"
            )
        if not any(node.get("CPU", 0) >= cpus - 1e-9 and node.get("GPU", 0) >= gpus - 1e-9 for node in nodes):
            biggest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
            raise ResourceError(
                f"{name} asks for {cpus:g} CPUs and {gpus:g} GPUs (cluster.{role}.num_cpus / num_gpus) but no node "
                f"has that much (largest: {biggest.get('CPU', 0):g} CPUs, {biggest.get('GPU', 0):g} GPUs)."
            )


@dataclass
class ClusterInfo:
    address: str
    dashboard_url: str
    started_here: bool  # a cluster this process started, and so stops
    reaper: Reaper | None = None  # ends what Ray leaves of a cluster started here (cluster/reaper.py)
    metrics_url: str = ""  # Ray's Prometheus endpoint on this node, for a cluster started here


def connect(cfg: Config, namespace: str, log: Callable[[str], None] = print) -> ClusterInfo:
    """Join the cluster already initialised in this process, ``cluster.address`` or ``$RAY_ADDRESS``
    (what ``ray job submit`` sets), or start one on 127.0.0.1."""
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return ClusterInfo(ctx.gcs_address, _dashboard_url(), started_here=False)
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ctx = ray.init(address=address, namespace=namespace, log_to_driver=True)
        return ClusterInfo(address, ctx.dashboard_url or "", started_here=False)
    cores, wanted = os.cpu_count() or 1, sum(d[1] for d in demands(cfg))
    cpus = int(cfg.cluster.num_cpus) or max(cores, math.ceil(wanted - 1e-9))  # a Ray node has whole CPUs
    gpus = int(cfg.cluster.num_gpus) if cfg.cluster.num_gpus >= 0 else _visible_gpus()
    check_resources(cfg, {"CPU": cpus, "GPU": gpus}, [{"CPU": cpus, "GPU": gpus}])  # before Ray starts
    if cpus > cores:
        log(f"ray: {cpus:g} logical CPUs on {cores:g} cores (the actors ask for {wanted:g}; they take turns)")
    if cfg.cluster.dashboard and not _port_free(cfg.cluster.dashboard_port):
        raise ResourceError(
            f"the dashboard port 127.0.0.1:{cfg.cluster.dashboard_port} is taken (another run's dashboard?): "
            "set cluster.dashboard_port to a free port, or cluster.dashboard=false"
        )
    metrics_port = cfg.cluster.metrics_export_port
    if metrics_port and not _port_free(metrics_port):
        raise ResourceError(
            f"the metrics port 127.0.0.1:{metrics_port} is taken (another run's?): set cluster.metrics_export_port "
            "to a free port, or 0 (Ray picks one)"
        )
    kwargs: dict[str, Any] = {"_metrics_export_port": metrics_port} if metrics_port else {}
    if cfg.cluster.num_gpus >= 0:
        kwargs["num_gpus"] = gpus
    reaper = Reaper()  # however this process ends, its cluster is gone seconds later (cluster/reaper.py)
    try:
        ctx = ray.init(
            address="local",  # never a stale cluster from an earlier run (DESIGN.md section 5)
            namespace=namespace,
            num_cpus=cpus,
            include_dashboard=cfg.cluster.dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=cfg.cluster.dashboard_port,
            **kwargs,
        )
    except BaseException:
        reaper.reap()
        raise
    reaper.started()
    url = ctx.dashboard_url or ""
    gcs = ctx.address_info.get("gcs_address", "")
    # The node's metrics agent serves Prometheus on the node's address (127.0.0.1 here), Ray's port or ours.
    metrics = f"http://{ctx.address_info['node_ip_address']}:{ctx.address_info['metrics_export_port']}/metrics"
    log(f"ray metrics (Prometheus; the run's are gtr_*): {metrics}")
    return ClusterInfo(gcs, f"http://{url}" if url else "", started_here=True, reaper=reaper, metrics_url=metrics)


def _port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (connections of a run that just ended, in TIME_WAIT, do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop(cluster: ClusterInfo) -> None:
    """Stop a cluster this process started, and end what Ray leaves of it; leave a joined one alone."""
    if cluster.started_here:
        ray.shutdown()
    if cluster.reaper is not None:
        cluster.reaper.reap()


def _visible_gpus() -> int:
    """The GPUs Ray will find on this machine (those CUDA_VISIBLE_DEVICES leaves)."""
    import torch

    return torch.cuda.device_count()


def _dashboard_url() -> str:
    try:
        url = ray._private.worker.get_dashboard_url()  # no public accessor in Ray 2.60
    except Exception:  # noqa: BLE001 - no dashboard in this cluster
        return ""
    return f"http://{url}" if url else ""


def cluster_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


# Ray's own errors for a process, node or object that is gone: what ``result`` reports as the actor's death.
ACTOR_GONE = (
    ray.exceptions.RayActorError,  # ActorDiedError, ActorUnavailableError
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.ObjectLostError,  # OwnerDiedError, ObjectReconstructionFailedError, ...
    ray.exceptions.OutOfMemoryError,  # the memory monitor killed the worker
)


class RayPending:
    def __init__(self, name: str, method: str, ref: ray.ObjectRef):
        self.name, self.method, self._ref = name, method, ref

    @property
    def ref(self) -> ray.ObjectRef:
        return self._ref

    def result(self) -> Any:
        """The value; ``ActorDied`` for a process that is gone, ``RoleFailed`` for a method that raised inside a
        live actor, classified by the original error (the RayTaskError's ``cause``, whose traceback it holds)."""
        try:
            return ray.get(self._ref)
        except ACTOR_GONE as error:
            raise ActorDied(self.name, type(error).__name__, self.method) from error
        except ray.exceptions.RayTaskError as error:
            cause = error.cause if isinstance(error.cause, BaseException) else str(error)
            gone = isinstance(cause, ACTOR_GONE)  # an argument's producer died, say
            raise RoleFailed(self.name, self.method, cause, recoverable=gone or infrastructure(cause)) from error

    def ready(self) -> bool:
        return bool(ray.wait([self._ref], timeout=0)[0])


class RayHandle:
    def __init__(self, name: str, actor: ray.actor.ActorHandle, closes: bool = False):
        self.name, self.actor, self.closes = name, actor, closes

    def call(self, method: str, *args: Any) -> RayPending:
        return RayPending(self.name, method, getattr(self.actor, method).remote(*args))

    def call2(self, method: str, *args: Any) -> tuple[RayPending, RayPending]:
        first, second = getattr(self.actor, method).options(num_returns=2).remote(*args)
        return RayPending(self.name, method, first), RayPending(self.name, method, second)

    def stop(self) -> None:
        """``close`` first where the role asks for it (``close_on_stop``: the teacher's scratch buffer, which
        nothing else removes; a dead or stuck actor is not waited for beyond CLOSE_SECONDS), then the actor is
        killed (its vLLM processes end with it)."""
        if self.closes:
            try:
                ray.get(self.actor.close.remote(), timeout=CLOSE_SECONDS)
            except Exception:  # noqa: BLE001 - gone or stuck: the kill below ends it either way
                pass
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


class RaySpawner:
    """Starts each role as an actor with its configured resources; restarts are ours, not Ray's
    (a restarted role needs the current adapter and a new incarnation, which the driver gives)."""

    def __init__(self, cfg: Config, namespace: str, cluster: ClusterInfo):
        self.cfg, self.namespace, self.cluster = cfg, namespace, cluster
        self._classes: dict[type, Any] = {}

    def __call__(self, kind: str, name: str, cls: type, cfg: Config, *args: Any) -> RayHandle:
        res = getattr(cfg.cluster, kind)
        remote_cls = self._classes.setdefault(cls, ray.remote(cls))
        actor = remote_cls.options(
            name=name,
            namespace=self.namespace,
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            resources=dict(res.resources) or None,
            max_restarts=0,
            max_concurrency=1,
        ).remote(cfg, "cuda" if res.num_gpus > 0 else "cpu", *args)
        return RayHandle(name, actor, closes=getattr(cls, "close_on_stop", False))

    def run(self, kind: str, fn: Callable, *args: Any) -> Any:
        res = getattr(self.cfg.cluster, kind)
        task = ray.remote(fn).options(
            num_cpus=res.num_cpus, num_gpus=res.num_gpus, resources=dict(res.resources) or None, max_retries=0
        )
        return ray.get(task.remote(*args))

    def shutdown(self) -> None:
        stop(self.cluster)


def start(cfg: Config, namespace: str, log: Callable[[str], None] = print) -> RaySpawner:
    """Connect, check that every actor can be placed (before any starts), and return the spawner."""
    cluster = connect(cfg, namespace, log)
    try:
        check_resources(cfg, ray.cluster_resources(), cluster_nodes())
    except ResourceError:
        stop(cluster)
        raise
    return RaySpawner(cfg, namespace, cluster)


def connected() -> bool:
    """This process is connected to a Ray cluster (as the driver, or inside an actor)."""
    return ray.is_initialized()


def gauge(name: str, description: str, tag_keys: tuple[str, ...]) -> ray.util.metrics.Gauge:
    """A gauge of Ray's metrics API: what this process sets goes to its node's metrics agent, whose Prometheus
    endpoint exports it as ``ray_<name>`` (cluster/raymetrics.py)."""
    return ray.util.metrics.Gauge(name, description, tag_keys)


def metrics_report_seconds() -> float:
    """How often this process reports what its gauges were set to: Ray's ``metrics_report_interval_ms`` (10 s;
    ``RAY_metrics_report_interval_ms`` changes it), never under 1 s. The agent forgets a value that is not
    reported again within two of these, so a gauge must be set again at least this often to stay visible."""
    return max(ray._config.metrics_report_interval_ms(), 1000) / 1000  # no public accessor in Ray 2.60
