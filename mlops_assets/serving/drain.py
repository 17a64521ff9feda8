"""Take a worker node out of the API hosts' Ray cluster before its host goes away: `python -m
mlops_assets.serving.container drain` in the leaving host's container (the `api` role's
drain.yml runs it, before OpenTofu destroys the instance of a lowered `api_instance_count`).

Ray's drain (the GCS's DrainNode, what `ray drain-node` and Ray's own autoscaler call) marks the
node as leaving with a deadline. Serve then starts each of the node's replicas on another node
before it stops the old one, and stops it gracefully: requests in flight finish, new ones go to
the other nodes. Without it, the stopped host's in-flight requests fail (measured: 2 of 7,080
under load through the hosts that stay; with it, 0 of 77,462; docs/performance.md).

The drain call runs in its own short process (`python -m mlops_assets.serving.drain ADDRESS
NODE_IP DEADLINE_S`) with the node's Ray environment (the cluster's token), like deploy.py: no
Ray driver is left behind. The caller then waits until no replica process is left here.
"""

from __future__ import annotations

import subprocess
import sys
import time

REASON = "DRAIN_NODE_REASON_PREEMPTION"  # the instance is going away at a known time
MESSAGE = "the API host is removed (api_instance_count lowered)"
REPLICA_PROCESS = "ray::ServeReplica"
GRACE_S = 30  # beyond the deadline: a replica's graceful stop ends by then


def drain_in_gcs(address: str, node_ip: str, deadline_s: float) -> str:
    """Ask the GCS at `address` to drain the alive node at `node_ip`; its node ID. Raises
    RuntimeError when there is no such node or the GCS refuses."""
    import ray
    from ray.core.generated import autoscaler_pb2, gcs_pb2

    gcs = ray._raylet.GcsClient(address=address)
    nodes = gcs.get_all_node_info(timeout=30)
    mine = [node_id for node_id, node in nodes.items()
            if node.state == gcs_pb2.GcsNodeInfo.ALIVE and node.node_manager_address == node_ip]
    if not mine:
        raise RuntimeError(f"no alive Ray node at {node_ip} in the cluster of {address}")
    accepted, refusal = gcs.drain_node(
        mine[0].hex(), autoscaler_pb2.DrainNodeReason.Value(REASON), MESSAGE,
        int(time.time() * 1000 + deadline_s * 1000),
    )
    if not accepted:
        raise RuntimeError(f"the GCS refused to drain the node at {node_ip}: {refusal}")
    return mine[0].hex()


def replica_processes() -> list[int]:
    """This node's Serve replica processes (the container's process table)."""
    from .runtime import _processes

    return sorted(pid for pid, (_, cmd) in _processes().items() if cmd.startswith(REPLICA_PROCESS))


def drain_node(address: str, node_ip: str, env: dict, deadline_s: float = 120, log=print,
               clock=time.monotonic, sleep=time.sleep) -> int:
    """Drain this node and wait until its replicas are gone; exit status 0 when they are, 1
    when the drain failed or replicas are left. Serve stops a replica that has not moved by
    the deadline minus its graceful-shutdown time, so the wait ends at most GRACE_S after it."""
    started = clock()
    result = subprocess.run([sys.executable, "-m", __name__, address, node_ip, str(deadline_s)],
                            env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        log(f"draining the node at {node_ip} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
        return 1
    log(f"node {result.stdout.strip()} at {node_ip} draining (deadline {deadline_s:.0f} s); waiting for its replicas to move")
    left = replica_processes()
    while left and clock() - started < deadline_s + GRACE_S:
        sleep(1)
        left = replica_processes()
    if left:
        log(f"replicas still on this node {clock() - started:.0f} s after the drain request: processes {left}")
        return 1
    log(f"no replica left on this node {clock() - started:.1f} s after the drain request")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m mlops_assets.serving.drain RAY_ADDRESS NODE_IP DEADLINE_S", file=sys.stderr)
        return 2
    try:
        print(drain_in_gcs(argv[0], argv[1], float(argv[2])))
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
