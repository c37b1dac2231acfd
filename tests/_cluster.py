"""A real two-node Ray cluster on this machine, started the way a user starts one (`ray start --head` with
token authentication, then `ray start --address` for a second node), and sweeps submitted to it with
`ray job submit --working-dir .`. Used by the session fixture ``kanji_cluster_run`` (conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray(env, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"ray {' '.join(args)} failed: {result.stderr[-3000:]}")
    return result


def submit(env, address: str, args: list[str], timeout: int = 900) -> tuple[int, str]:
    """`ray job submit --working-dir .` of the tiny kanji sweep; returns (exit code, job logs)."""
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
         "python", "sweeps/kanji_rank.py", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


@dataclass
class ClusterRun:
    code: int  # `ray job submit` of the sweep
    logs: str
    refused_code: int  # the same sweep asking for more CPUs per trial than any node has
    refused_logs: str
    nodes: set[str]  # the node ids that were alive


def run_kanji_on_two_nodes(args: list[str], refused_args: list[str]) -> ClusterRun:
    """Start the cluster (head and worker node, 1 CPU each), submit the refused sweep and then the sweep,
    stop the cluster; the cluster never outlives this call (other tests start their own local Ray)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    address = f"http://127.0.0.1:{dashboard}"
    ray(env, "get-auth-token", "--generate", check=False)  # the token every node and client shares
    try:
        ray(env, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats")  # fmt: skip
        ray(env, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1")
        refused_code, refused_logs = submit(env, address, refused_args, timeout=300)
        code, logs = submit(env, address, args)
        nodes = json.loads(ray(env, "list", "nodes", "--address", address, "--format", "json").stdout)
        alive = {n["node_id"] for n in nodes if n["state"] == "ALIVE"}
    finally:
        ray(env, "stop", "--force", check=False)
    return ClusterRun(code, logs, refused_code, refused_logs, alive)
