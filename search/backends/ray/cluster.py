"""Connecting the Ray back-end: a local Ray on loopback, or a cluster, and the storage every node must see.

A local Ray listens on 127.0.0.1 only; a cluster keeps its own network settings. A local Ray's
processes are watched by a small process that removes them if the driver is killed (kill -9 gives
Ray no chance to stop its agents, which stayed behind until the next run).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UsageError

log = logging.getLogger(__name__)

URI_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "hdfs://", "az://", "file://")

# Runs beside a driver that started a local Ray: when the driver is gone, every process of that
# Ray session is killed: those whose command line names the session, and those holding a file of
# the session's folder open (Ray's agents rename themselves, "ray::DashboardAgent", but keep their
# logs open). Plain Python, Linux /proc.
_WATCHDOG = r"""
import os, signal, sys, time
driver, session = int(sys.argv[1]), sys.argv[2]

def of_session(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if session.encode() in handle.read():
                return True
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if session in os.readlink(f"/proc/{pid}/fd/{fd}"):
                return True
    except OSError:
        pass
    return False

while True:
    try:
        os.kill(driver, 0)
    except ProcessLookupError:
        break
    time.sleep(1)
time.sleep(2)  # a normal exit stops Ray itself: leave it the time
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid() and of_session(pid):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
"""


@dataclass
class RaySession:
    """A connected Ray and the options the Ray loop reads."""

    storage: str
    trial_resources: dict[str, float] = field(default_factory=dict)
    max_concurrent: int | None = None
    watchdog: subprocess.Popen | None = None

    def close(self) -> None:
        import ray

        ray.shutdown()  # a local Ray stops; a cluster stays up and only this driver leaves
        if self.watchdog is not None:
            self.watchdog.kill()
            self.watchdog.wait(timeout=10)


def connect(setup, prepared=None) -> RaySession:
    """Start a local Ray (listening on 127.0.0.1 only), or join the cluster at --address / RAY_ADDRESS,
    and check that its nodes share the experiment storage. Called when the search starts, before
    anything is created: an unreachable cluster or unshared storage fails with one line."""
    options = setup.options
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address and "RAY_AUTH_MODE" not in os.environ and _auth_token_available():
        # Clusters started with `ray start --head` use token authentication (Ray 2.60), but a client
        # joining an address sends its token only in token mode, which Ray reads when imported
        os.environ["RAY_AUTH_MODE"] = "token"
    if not address:
        # Ray keeps a local instance on loopback when it is not meant to form a cluster (what it does
        # on macOS and Windows); Linux defaults to the machine's address and all interfaces
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    level = logging.INFO if log.isEnabledFor(logging.INFO) else logging.WARNING
    try:
        if address:
            ray.init(address=address, logging_level=level, log_to_driver=level <= logging.INFO)
        else:
            ray.init(include_dashboard=False, logging_level=level, log_to_driver=level <= logging.INFO)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = address or "a local Ray"
        raise UsageError(f"cannot start or join Ray at {where} ({str(error).splitlines()[0][:200]}): "
                         "check --address HOST:PORT (or RAY_ADDRESS), that `ray start --head` runs there, and, for a "
                         "cluster with token authentication, that its token is here (~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
    watchdog = None if address else _watch_local_ray()
    storage = storage_path(options.storage_path, setup.output)
    try:
        check_shared_storage(storage)
    except BaseException:
        ray.shutdown()
        if watchdog is not None:
            watchdog.kill()
        raise
    return RaySession(storage, dict(options.trial_resources), options.max_concurrent, watchdog)


def _watch_local_ray() -> subprocess.Popen | None:
    """The watchdog of a local Ray this driver started (Linux only)."""
    import ray

    if not Path("/proc").is_dir():
        return None
    try:
        session = Path(ray._private.worker.global_worker.node.get_session_dir_path()).name
    except Exception:  # noqa: BLE001 - an internal of Ray: without it, no watchdog
        return None
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), session], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _auth_token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).is_file()


def storage_path(storage: str | None, output: Path) -> str:
    """Where Tune keeps trial folders and checkpoints: --storage-path, else ``OUTPUT/ray``."""
    path = storage or str(output / "ray")
    return path if path.startswith(URI_SCHEMES) else str(Path(path).resolve())


def check_shared_storage(storage: str) -> None:
    """On a multi-node cluster, every node must see the experiment storage: check it before any trial.

    A URI (s3://, gs://, ...) is taken as shared. A plain path is checked: the driver writes a marker
    file there and a task on each alive node looks for it.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2 or storage.startswith(URI_SCHEMES):
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = Path(storage)
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".rkd-shared-{uuid.uuid4().hex}"
    marker.write_text("rkd-search storage check")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        checks = {n["NodeID"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker))
                  for n in nodes}
        blind = [node for node, ref in checks.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)
        for path in created:  # leave nothing behind: validation creates nothing
            path.rmdir()
    if blind:
        raise UsageError(
            f"the Ray experiment storage {storage} is not shared: {len(blind)} of {len(nodes)} nodes cannot see it. "
            "On a multi-node cluster pass --storage-path on shared storage (an NFS path mounted on every node, or s3://...)"
        )


def trial_resources(session: RaySession) -> dict[str, float]:
    """--trial-resources, else one trial per node at a time: two trainings on the same cores are slower
    in total than one after the other (measured on 2 cores), so a trial takes the smallest node's CPUs."""
    import ray

    if session.trial_resources:
        return dict(session.trial_resources)
    cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return {"cpu": min((c for c in cpus if c > 0), default=1.0)}
