"""A Slurm cluster on this machine, on 127.0.0.1, for the Slurm e2e tests: one node, or several
"nodes" (one slurmd each, on its own port, sharing this machine's CPUs and memory) for the tests
of multi-node launches.

Needs Debian's `slurm-wlm` and `munge` (`apt-get install slurm-wlm munge`) and root (the
daemons run as root, with munge as the `munge` user). Everything the cluster writes (its config,
state, spool and logs) goes under the folder it is given; `SLURM_CONF` in the environment
points `sbatch`, `squeue` and datatrove's executor at it.

    python -m tests.slurm_cluster DIR [NODES]   # start one by hand; Ctrl-C stops it
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

#: The binaries a cluster needs.
REQUIRED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
PARTITION = "local"


def missing_binaries() -> list[str]:
    return [name for name in REQUIRED if shutil.which(name) is None]


def _node_lines(nodes: int) -> list[str]:
    """The cluster's nodes: this machine under its own name, or `nodes` named node1.. on their
    own slurmd ports, each with its share of the CPUs and memory."""
    host = socket.gethostname().split(".")[0]
    memory_mb = int(psutil.virtual_memory().total / 2**20 * 0.9) // nodes
    cpus = max(1, (os.cpu_count() or 1) // nodes)
    if nodes == 1:
        return [f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN"]
    return [
        f"NodeName=node{index} NodeHostname={host} NodeAddr=127.0.0.1 Port={16818 + index} "
        f"CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN"
        for index in range(1, nodes + 1)
    ]


def node_names(nodes: int) -> list[str]:
    """The slurmd names of a cluster of `nodes` (`-N` of each daemon; none for one node)."""
    return [] if nodes == 1 else [f"node{index}" for index in range(1, nodes + 1)]


def _config(folder: Path, nodes: int) -> str:
    host = socket.gethostname().split(".")[0]
    return "\n".join(
        [
            "ClusterName=selflengthen-test",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SlurmctldPort=16817",
            "SlurmdPort=16818",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={folder / 'spool-%n'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={folder / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'slurmd-%n.log'}",
            *_node_lines(nodes),
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _start_munge() -> None:
    """munged as the munge user, unless one answers already."""
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return
    Path("/run/munge").mkdir(exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    for _ in range(50):
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("munged did not start")


@contextmanager
def local_slurm(folder: Path, nodes: int = 1) -> Iterator[dict[str, str]]:
    """Run slurmctld and a slurmd per node for the duration of the block; yields the environment
    that points Slurm's commands at this cluster (and, with several nodes, their main address at
    127.0.0.1: the node names do not resolve)."""
    if missing := missing_binaries():
        raise RuntimeError(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state").mkdir(exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, nodes))
    environment = os.environ | {"SLURM_CONF": str(conf)} | ({"MASTER_ADDR": "127.0.0.1"} if nodes > 1 else {})
    _start_munge()
    started = time.time()
    commands = [["slurmctld"]] + ([["slurmd", "-N", name] for name in node_names(nodes)] or [["slurmd"]])
    daemons = [
        subprocess.Popen(
            [*command, "-D", "-f", str(conf)],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=(folder / f"{'-'.join(command[::2])}.stderr").open("w"),
        )
        for command in commands
    ]
    try:
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=environment
            ).stdout.strip()
            if state in ("idle", "mix", "alloc"):
                break
            if time.monotonic() > deadline or any(daemon.poll() is not None for daemon in daemons):
                raise RuntimeError(
                    f"the Slurm cluster did not come up (node state {state!r}; logs in {folder})"
                )
            time.sleep(0.5)
        yield environment
    finally:
        subprocess.run(["scancel", "--partition", PARTITION], env=environment, capture_output=True)
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        for process in psutil.process_iter(["name", "create_time"]):  # job steps slurmd left behind
            if process.info["name"] == "slurmstepd" and process.info["create_time"] >= started:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()


if __name__ == "__main__":
    with local_slurm(Path(sys.argv[1]).resolve(), int(sys.argv[2]) if len(sys.argv) > 2 else 1) as env:
        print(f"SLURM_CONF={env['SLURM_CONF']}  (Ctrl-C stops the cluster)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
