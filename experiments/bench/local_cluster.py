"""A local multi-node Ray cluster for the scaling benchmarks: each node a raylet of its own
(``ray.cluster_utils.Cluster``) with the same number of CPUs."""
from __future__ import annotations

import contextlib
import time

import ray
from ray.cluster_utils import Cluster


@contextlib.contextmanager
def local_cluster(nodes: int, cpus_per_node: int):
    """Yields ``(address, timing)``: ``timing["wall s"]`` is the time spent inside the ``with``
    block and ``timing["alive"]`` the nodes alive at its end; Ray and the cluster are shut down after."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False})
    timing: dict = {}
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        start = time.perf_counter()
        yield cluster.address, timing
        timing["wall s"] = time.perf_counter() - start
        timing["alive"] = len([n for n in ray.nodes() if n["Alive"]])
    finally:
        ray.shutdown()
        cluster.shutdown()
