"""Fixtures of the cluster tests."""

import os

import pytest


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster on 127.0.0.1 for one test module, stopped at its end."""
    from cluster import remote  # noqa: F401 - sets Ray's environment (loopback, no auth) before Ray starts

    ray = pytest.importorskip("ray")
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, namespace="tests")
    yield
    ray.shutdown()
