"""A simulated autoscaling Ray cluster on one machine (Ray's ``fake_multinode`` provider).

The head has no room for work (0 CPUs, 0 GPUs); the autoscaler adds worker nodes of two types as
work waits for them and removes them after an idle timeout:

- ``cpu``: 2 CPUs, up to 3 nodes;
- ``gpu``: 2 CPUs + 1 logical GPU (a resource only: the work runs on the CPU), up to 2 nodes.

Each worker node is a raylet of its own (with its own agents and worker processes) started by the
autoscaler on the head, on this machine. What Ray's own helper (``ray.cluster_utils.AutoscalingCluster``)
does not, and this does:

- the cluster has a GCS port, dashboard port and temp dir of its own, and the
  provider's nodes are told where the head's GCS is (``provider.gcs_address``; without it they look
  for it at 6379 and none joins when the head is elsewhere);
- the authentication mode is always explicit (``RAY_AUTH_MODE=disabled`` or ``token``): left unset,
  Ray 2.60 turns token mode on whenever a ``~/.ray/auth_token`` exists and then rejects a client
  holding another token; with ``auth="token"`` a fresh token is written to ``<temp_dir>/auth_token``
  (mode 600) and handed to the nodes and to clients through ``RAY_AUTH_TOKEN_PATH``;
- it never runs ``ray stop`` (``ray stop --force`` ends every Ray on the machine): :meth:`stop`
  ends this cluster's processes only, found by its temp dir (in their command line), by a marker
  variable in their environment and as descendants of those, and checks that none is left (the
  head raylet's dashboard and runtime-env agents outlive a killed raylet otherwise).

Command line (one cluster per temp dir; Ctrl-C or ``stop`` ends it)::

    python infra/local/fake_cluster.py start --temp-dir /tmp/me/ray --port 6391 [--auth token]
    #   prints the address and the environment a driver needs, then waits
    python infra/local/fake_cluster.py stop --temp-dir /tmp/me/ray

No ``impumae`` import: this is infrastructure, used by tests/test_autoscaling.py,
experiments/bench/autoscaling.py and docs/scaling.md.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MARKER = "IMPUMAE_FAKE_CLUSTER"   # set in the head's environment; every process of the cluster inherits it
HEAD_TYPE = "ray.head.default"


def node_types(cpu_max: int = 3, gpu_max: int = 2, object_store_mb: int = 150) -> dict:
    """The worker node types, in the autoscaler's ``available_node_types`` form."""
    store = object_store_mb * 1024 ** 2
    return {
        HEAD_TYPE: {"resources": {}, "node_config": {}, "max_workers": 0},
        "cpu": {"resources": {"CPU": 2, "object_store_memory": store}, "node_config": {},
                "min_workers": 0, "max_workers": cpu_max},
        "gpu": {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": store}, "node_config": {},
                "min_workers": 0, "max_workers": gpu_max},
    }


def autoscaling_config(gcs_address: str, idle_timeout_s: float, types: dict) -> dict:
    """The cluster config ``ray start --autoscaling-config`` reads (the fields of Ray's
    ``fake_multi_node/example.yaml``, which the wheel does not ship)."""
    return {
        "cluster_name": "impumae-fake",
        "max_workers": sum(t.get("max_workers", 0) for name, t in types.items() if name != HEAD_TYPE),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_s / 60.0,
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeCluster:
    """One simulated autoscaling cluster. ``temp_dir`` must be short (Ray's Unix socket paths must
    fit in 107 bytes) and is this cluster's alone; ports default to free ones."""
    temp_dir: str
    port: int = 0
    idle_timeout_s: float = 15.0
    auth: str = "disabled"          # or "token"
    cpu_max: int = 3
    gpu_max: int = 2
    ray_bin: str = field(default_factory=lambda: str(Path(sys.executable).with_name("ray")))
    head: subprocess.Popen | None = None

    def __post_init__(self):
        if self.auth not in ("disabled", "token"):
            raise ValueError(f"auth must be 'disabled' or 'token', not {self.auth!r}")
        self.temp_dir = str(Path(self.temp_dir).resolve())
        self.port = self.port or free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def token_path(self) -> Path:
        return Path(self.temp_dir) / "auth_token"

    def client_env(self) -> dict:
        """What a driver on this machine needs in its environment to connect (``RAY_ADDRESS`` too)."""
        env = {"RAY_AUTH_MODE": self.auth, "RAY_ADDRESS": self.address}
        if self.auth == "token":
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        return env

    def start(self, timeout_s: float = 120) -> "FakeCluster":
        if remaining_processes(self.temp_dir):
            raise RuntimeError(f"processes of an earlier cluster in {self.temp_dir} still run; "
                               f"stop it first: python {__file__} stop --temp-dir {self.temp_dir}")
        root = Path(self.temp_dir)
        root.mkdir(parents=True, exist_ok=True)
        config = root / "autoscaling.json"
        config.write_text(json.dumps(autoscaling_config(self.address, self.idle_timeout_s,
                                                        node_types(self.cpu_max, self.gpu_max)), indent=1))
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", MARKER: self.temp_dir,
               "RAY_USAGE_STATS_ENABLED": "0", **self.client_env()}
        env.pop("RAY_ADDRESS")
        env.pop("RAY_AUTH_TOKEN", None)   # the token file below is the only token of this cluster
        if self.auth == "token":
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)
        command = [self.ray_bin, "start", "--head", "--block", "--disable-usage-stats",
                   "--port", str(self.port), "--node-ip-address", "127.0.0.1", "--temp-dir", self.temp_dir,
                   "--num-cpus", "0", "--num-gpus", "0", "--autoscaling-config", str(config),
                   "--include-dashboard", "false", "--dashboard-agent-listen-port", str(free_port()),
                   "--object-store-memory", str(100 * 1024 ** 2)]
        log = open(root / "head.log", "ab")
        self.head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.head.poll() is not None:
                raise RuntimeError(f"the head exited ({self.head.returncode}); see {root / 'head.log'}")
            if self.nodes() is not None:
                return self
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"the head at {self.address} did not come up in {timeout_s:.0f} s; see {root / 'head.log'}")

    def record(self, timeout_s: float = 60) -> dict | None:
        """What the GCS knows, read by a short driver of its own (:func:`_record`): ``nodes`` (alive
        and dead: ``node_id``, ``state``, ``is_head``, ``node_type``, ``resources``, ``start_time_ms``,
        ``end_time_ms``), ``workers`` (worker processes: ``pid``, ``node_id``, ``job_id``, times) and
        ``actors`` (``class_name``, ``pid``, ``node_id``, ``state``, times); None while the head
        does not answer."""
        env = {**os.environ, **self.client_env()}
        env.pop(MARKER, None)
        try:
            done = subprocess.run([sys.executable, __file__, "record", "--address", self.address], env=env,
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        return json.loads(done.stdout.strip().splitlines()[-1])

    def nodes(self) -> list[dict] | None:
        recorded = self.record()
        return None if recorded is None else recorded["nodes"]

    def alive_workers(self) -> list[dict]:
        return [n for n in (self.nodes() or []) if n["state"] == "ALIVE" and not n["is_head"]]

    def wait_until(self, predicate, timeout_s: float, what: str, every_s: float = 1.0):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(every_s)
        raise TimeoutError(f"{what}: not within {timeout_s:.0f} s (nodes: {self.nodes()})")

    def stop(self, timeout_s: float = 30) -> list[int]:
        """End every process of this cluster; returns the pids of those still alive after (none,
        unless something refuses SIGKILL)."""
        found = _snapshot(self.temp_dir, self.head.pid if self.head else None)
        if self.head is not None and self.head.poll() is None:
            os.killpg(self.head.pid, signal.SIGTERM)   # `ray start --block` stops its node's processes
            try:
                self.head.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.head.pid, signal.SIGKILL)
                self.head.wait(timeout=10)
        left = end_processes(found | _snapshot(self.temp_dir, None), timeout_s)
        return left


def _record(address: str) -> dict:
    """The GCS's node, worker and actor tables as plain data (private Ray APIs: the public state
    API needs the dashboard, which the minimal ``ray`` wheel does not include)."""
    import ray
    from ray._private.state import state
    from ray._raylet import GcsClient
    from ray.core.generated import common_pb2, gcs_pb2

    ray.init(address=address, log_to_driver=False, configure_logging=False, include_dashboard=False)
    try:
        accessor = state._connect_and_get_accessor()
        nodes = []
        for info in GcsClient(address=address).get_all_node_info(timeout=30).values():
            nodes.append({"node_id": info.node_id.hex(), "is_head": info.is_head_node,
                          "state": gcs_pb2.GcsNodeInfo.GcsNodeState.Name(info.state),
                          "node_type": "head" if info.is_head_node else (info.node_type_name or "?"),
                          "resources": dict(info.resources_total),
                          "start_time_ms": info.start_time_ms, "end_time_ms": info.end_time_ms})
        workers = []
        for raw in accessor.get_worker_table():
            info = gcs_pb2.WorkerTableData.FromString(raw)
            if info.worker_type != common_pb2.WORKER:
                continue
            workers.append({"pid": info.pid, "node_id": info.worker_address.node_id.hex(),
                            "job_id": info.job_id.hex(), "alive": info.is_alive,
                            "start_time_ms": info.start_time_ms, "end_time_ms": info.end_time_ms})
        actors = [{"class_name": a["ActorClassName"], "pid": a["Pid"], "node_id": a["Address"]["NodeID"],
                   "state": a["State"], "start_time_ms": a["StartTime"], "end_time_ms": a["EndTime"]}
                  for a in state.actor_table(None).values()]
        return {"nodes": nodes, "workers": workers, "actors": actors}
    finally:
        ray.shutdown()


def _matches(proc: psutil.Process, temp_dir: str) -> bool:
    """Ray's processes name their session dir (``<temp_dir>/session_...``) in their command line;
    the marker in the environment covers the rest (workers rename themselves ``ray::...``)."""
    try:
        if os.path.join(temp_dir, "session_") in " ".join(proc.cmdline()):
            return True
        return proc.environ().get(MARKER) == temp_dir
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _snapshot(temp_dir: str, head_pid: int | None) -> set[psutil.Process]:
    """This cluster's processes: those naming its temp dir or carrying its marker, and their descendants."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}   # never this process or its callers
    found = {p for p in psutil.process_iter() if p.pid not in mine and _matches(p, temp_dir)}
    if head_pid is not None:
        try:
            found.add(psutil.Process(head_pid))
        except psutil.NoSuchProcess:
            pass
    return {p for p in _with_descendants(found) if p.pid not in mine}


def _with_descendants(procs) -> set[psutil.Process]:
    """``procs`` and every process under them (those that end meanwhile left out)."""
    found = set(procs)
    for proc in list(found):
        try:
            found.update(proc.children(recursive=True))
        except psutil.Error:
            pass
    return found


def node_processes(node_id: str) -> list[psutil.Process]:
    """A simulated node's raylet (the provider starts it with its node id in the environment) and every
    process under it: what to SIGKILL to lose that node."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id:
                found.append(proc)
        except psutil.Error:
            pass
    return list(_with_descendants(found))


def remaining_processes(temp_dir: str) -> list[int]:
    """Pids of the live processes of the cluster in ``temp_dir`` (what a clean stop leaves: none)."""
    temp_dir = str(Path(temp_dir).resolve())
    alive = []
    for proc in _snapshot(temp_dir, None):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(alive)


def end_processes(procs: set[psutil.Process], timeout_s: float = 30) -> list[int]:
    """SIGTERM, then SIGKILL what is left after ``timeout_s``; returns the pids still alive."""
    procs = {p for p in procs if p.is_running()}
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=10)
    return sorted(p.pid for p in alive)


def stop_by_temp_dir(temp_dir: str, timeout_s: float = 30) -> list[int]:
    """``stop`` from another process (the one that started the cluster is gone or elsewhere)."""
    temp_dir = str(Path(temp_dir).resolve())
    return end_processes(_snapshot(temp_dir, None), timeout_s)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a cluster and wait (Ctrl-C stops it)")
    start.add_argument("--temp-dir", required=True, help="this cluster's own Ray temp dir (short path)")
    start.add_argument("--port", type=int, default=6391, help="the head's GCS port")
    start.add_argument("--idle-timeout-s", type=float, default=60.0)
    start.add_argument("--auth", choices=["disabled", "token"], default="disabled")
    stop = sub.add_parser("stop", help="end every process of the cluster in --temp-dir")
    stop.add_argument("--temp-dir", required=True)
    record = sub.add_parser("record", help="print the cluster's nodes, worker processes and actors (JSON)")
    record.add_argument("--address", required=True)
    args = parser.parse_args(argv)
    if args.command == "record":
        print(json.dumps(_record(args.address)))
        return 0
    if args.command == "stop":
        left = stop_by_temp_dir(args.temp_dir)
        print(f"stopped; {len(left)} process(es) left" + (f": {left}" if left else ""))
        return 1 if left else 0
    cluster = FakeCluster(args.temp_dir, port=args.port, idle_timeout_s=args.idle_timeout_s, auth=args.auth).start()
    print(f"head at {cluster.address}; for a driver:")
    for key, value in cluster.client_env().items():
        print(f"  export {key}={value}")
    try:
        while cluster.head.poll() is None:
            time.sleep(5)
    except KeyboardInterrupt:
        pass
    left = cluster.stop()
    print(f"stopped; {len(left)} process(es) left" + (f": {left}" if left else ""))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
