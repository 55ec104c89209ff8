"""A Spark standalone cluster on 127.0.0.1 for the tests marked ``spark`` that need real executors.

One master and one worker, each in its own JVM, started from the pyspark package's ``bin/spark-class``
(``org.apache.spark.deploy.master.Master`` / ``org.apache.spark.deploy.worker.Worker``), bound to 127.0.0.1
(``SPARK_LOCAL_IP``, ``--host``), ports chosen by the JVMs (read back from their logs), master REST server
off, daemons with a 256 MB heap, one worker of :data:`WORKER_CORES` cores and :data:`WORKER_MEMORY`, its own
conf/work/local/temp folders under the session's temp dir. Stopped at the end of the session by pid: the
worker (which stops its executors), then any executor or Python worker left over (every descendant, found
before the stop), then the master; a process still alive after that fails the session, named by pid.

The worker does not inherit ``PYTHONPATH``: its executors import ccmb only as a cluster's nodes would, from
what the driver ships (:func:`ccmb.spark.get_spark_session`) or from an install.

Registered by ``tests/conftest.py``; a test asks for the session fixture ``spark_cluster``.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import pytest

WORKER_CORES = 1
WORKER_MEMORY = "1g"
EXECUTOR_MEMORY = "512m"
DRIVER_MEMORY = "512m"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


@dataclass
class SparkCluster:
    """A running standalone cluster: its master URL and how a driver process reaches it."""

    master: str
    root: Path
    work_dir: Path
    pids: Dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Dict[str, str]:
        """Spark settings of a driver on this machine (loopback, small memory)."""
        return {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                "spark.driver.memory": DRIVER_MEMORY, "spark.executor.memory": EXECUTOR_MEMORY}

    def cli_args(self) -> List[str]:
        """``--engine spark --spark-master ... --spark-conf ...`` of a ccmb curation command."""
        args = ["--engine", "spark", "--spark-master", self.master]
        for key, value in self.conf.items():
            args += ["--spark-conf", f"{key}={value}"]
        return args

    def driver_env(self) -> Dict[str, str]:
        """Environment of a driver process (a ``python -m ccmb`` subprocess): loopback only."""
        env = dict(os.environ)
        env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
        return env


def _spark_home() -> Path:
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-class").exists():  # pragma: no cover - depends on the install
        raise RuntimeError(f"pyspark at {home} has no bin/spark-class")
    return home


def _daemon_env(root: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for name in ("conf", "work", "local", "tmp"):
        (root / name).mkdir(parents=True, exist_ok=True)
    env.update(SPARK_HOME=str(_spark_home()), SPARK_CONF_DIR=str(root / "conf"), SPARK_LOCAL_IP="127.0.0.1",
               SPARK_DAEMON_MEMORY="256m", SPARK_LOCAL_DIRS=str(root / "local"),
               SPARK_WORKER_DIR=str(root / "work"), SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
               TMPDIR=str(root / "tmp"), PYSPARK_PYTHON=sys.executable)
    return env


def _start(cls: str, args: List[str], log: Path, env: Dict[str, str]) -> subprocess.Popen:
    # spark-class execs the JVM: the pid of this process is the JVM's
    with open(log, "wb") as out:
        return subprocess.Popen([str(_spark_home() / "bin" / "spark-class"), cls, *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, what: str) -> re.Match:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.search(pattern, text)
        if found:
            return found
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; its log {log}:\n{text[-3000:]}")
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not start in {START_TIMEOUT_S:.0f}s; its log {log}")


def _children(pid: int) -> List[int]:
    out: List[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _descendants(pid: int) -> List[int]:
    """Every process under ``pid`` (executors, their Python daemons and workers), parents first."""
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _stop(pid: int, proc=None) -> None:
    """SIGTERM ``pid``, wait, SIGKILL it if it is still there."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait(10)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def start_cluster(root: Path):
    """Start master + worker under ``root``; returns (cluster, [worker, master] processes)."""
    env = _daemon_env(root)
    procs: List[subprocess.Popen] = []
    try:
        master = _start("org.apache.spark.deploy.master.Master",
                        ["--host", "127.0.0.1", "--port", "0", "--webui-port", "0"], root / "master.log", env)
        procs.append(master)
        url = _wait_for(root / "master.log", r"Starting Spark master at (spark://127\.0\.0\.1:\d+)", master,
                        "Spark master").group(1)
        _wait_for(root / "master.log", r"New state: ALIVE", master, "Spark master")
        worker = _start("org.apache.spark.deploy.worker.Worker",
                        [url, "--host", "127.0.0.1", "--port", "0", "--webui-port", "0", "--cores", str(WORKER_CORES),
                         "--memory", WORKER_MEMORY, "--work-dir", str(root / "work")], root / "worker.log", env)
        procs.insert(0, worker)
        _wait_for(root / "worker.log", r"Successfully registered with master", worker, "Spark worker")
    except BaseException:
        stop_cluster(procs)
        raise
    return SparkCluster(master=url, root=root, work_dir=root / "work",
                        pids={"master": master.pid, "worker": worker.pid}), procs


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def stop_cluster(procs: List[subprocess.Popen]) -> List[int]:
    """Stop the worker (then any executor or Python worker it leaves), then the master, by pid; returns the
    pids still alive afterwards (none, unless a stop failed)."""
    seen: List[int] = []
    for proc in procs:
        left = _descendants(proc.pid)
        seen += [proc.pid] + left
        _stop(proc.pid, proc)
        for child in left:
            _stop(child)
    return [pid for pid in seen if _alive(pid)]


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A Spark standalone cluster (master + worker JVMs on 127.0.0.1) for the whole session."""
    cluster, procs = start_cluster(tmp_path_factory.mktemp("spark-cluster"))
    try:
        yield cluster
    finally:
        left = stop_cluster(procs)
        if left:  # a leaked JVM or Python worker is an error of the session, named by pid
            raise RuntimeError(f"Spark cluster processes still running after the stop: pids {left}")
