"""Take a worker node out of the API hosts' Ray cluster before its host goes away (a lowered
`api_instance_count`; ansible_roles/api_drain.yml runs the steps, before OpenTofu destroys the
instance), in this order:

1. `container drain request` on the leaving worker: Ray's drain (the GCS's DrainNode, what
   `ray drain-node` and Ray's autoscaler call) marks the node as leaving, with a deadline.
   Serve marks its replicas as migrating; they keep serving.
2. `container apply` on the head, with the settings for the hosts that stay (a lower target).
   Serve now has more replicas than its target and stops the migrating ones first, gracefully:
   requests in flight finish, new ones go to the other nodes.
3. `container drain wait` on the leaving worker: until no replica is left there; then the
   container is stopped.

The order matters. With the lower target first, Serve's downscale picks the replica to stop
by its own rules (newest first), which may be the one on a worker that stays; Serve runs a
proxy only on a node with a replica, so that host refuses requests until a replica comes back.

The drain call runs in its own short process (`python -m mlops_assets.serving.drain ADDRESS
NODE_IP DEADLINE_S`) with the node's Ray environment (the cluster's token), like deploy.py: no
Ray driver is left behind.
"""

from __future__ import annotations

import subprocess
import sys
import time

REASON = "DRAIN_NODE_REASON_PREEMPTION"  # the instance is going away at a known time
MESSAGE = "the API host is removed (api_instance_count lowered)"
REPLICA_PROCESS = "ray::ServeReplica"
GRACE_S = 30  # beyond the deadline: a replica's graceful stop ends by then
DEADLINE_S = 120  # the drain's deadline (Serve force-stops a replica left on the node then)


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


def request_drain(address: str, node_ip: str, env: dict, deadline_s: float = DEADLINE_S, log=print) -> int:
    """Ask the GCS to drain this node (in a short process with the node's Ray environment);
    exit status 0 when it accepted. Serve then marks the node's replicas as migrating: they
    keep serving until the head's lower target (or a replacement elsewhere) lets Serve stop
    them gracefully."""
    result = subprocess.run([sys.executable, "-m", __name__, address, node_ip, str(deadline_s)],
                            env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        log(f"draining the node at {node_ip} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
        return 1
    log(f"node {result.stdout.strip()} at {node_ip} draining (deadline {deadline_s:.0f} s)")
    return 0


def wait_until_drained(deadline_s: float = DEADLINE_S, log=print) -> int:
    """Wait until no replica is left on this node; exit status 0 when none is, 1 when replicas
    are left. Serve stops a replica that has not moved by the drain's deadline minus its
    graceful-shutdown time, so the wait ends at most GRACE_S after the deadline."""
    started = time.monotonic()
    left = replica_processes()
    while left and time.monotonic() - started < deadline_s + GRACE_S:
        time.sleep(1)
        left = replica_processes()
    if left:
        log(f"replicas still on this node after {time.monotonic() - started:.0f} s: processes {left}")
        return 1
    log(f"no replica left on this node ({time.monotonic() - started:.1f} s of waiting)")
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
