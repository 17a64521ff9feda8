"""Benchmark of the whole graph, local target: a cold `make run` against a no-change one.

Each run is the command `make run` calls (`python -m mlops_assets.cli run`) in a fresh
process, on a stack of its own (mlops_assets_tests/lazy_stack.py: a copy of the checkout, a
fresh state folder, free loopback ports, the machine's container engine), so the figures
include Python start-up, training, the image build, Ray's start and Prometheus. The no-change
run must train nothing, build nothing and leave the API's replicas alone; the benchmark exits
non-zero when it does otherwise.

    .venv/bin/python bench/whole_graph.py [--repeat 3]      (as root, for the image build)

Cold runs reuse the machine's caches that a user's second project would reuse too: the
offline base image, Podman's layer cache and the wheel cache (FACTS.md); the first build on
a fresh machine takes minutes longer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlops_assets_tests.lazy_stack import ASSETS, LocalStack  # noqa: E402

LIVE_SERVICE_CHECKS = {"container_image", "deployed_api", "dashboards"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3, help="no-change runs after the cold one")
    args = parser.parse_args()
    from mlops_assets.rehearsal.engine import NoEngineError, docker_client, docker_host

    try:
        engine = docker_host()
    except NoEngineError as exc:
        sys.exit(f"no container engine: {exc}")
    client = docker_client()
    images_before = {tag for image in client.images.list() for tag in image.tags}
    with tempfile.TemporaryDirectory(prefix="mlops-bench-graph-") as tmp:
        stack = LocalStack(Path(tmp), docker_host=engine)
        try:
            cold = stack.cli("run")
            if cold.returncode != 0:
                sys.exit(f"cold run failed:\n{cold.tail()}")
            if cold.materialized != set(ASSETS):
                sys.exit(f"cold run materialized only {sorted(cold.materialized)}")
            print(f"cold: {cold.seconds:.1f}s ({len(cold.materialized)} assets)", flush=True)
            pids = stack.replica_pids()
            warms = []
            for i in range(args.repeat):
                warm = stack.cli("run")
                if warm.returncode != 0:
                    sys.exit(f"no-change run failed:\n{warm.tail()}")
                extra = warm.materialized - LIVE_SERVICE_CHECKS
                image = stack.metadata("container_image")
                if extra or image["rebuilt"] or stack.replica_pids() != pids:
                    sys.exit(f"the no-change run did work: materialized {sorted(extra)}, image rebuilt "
                             f"{image['rebuilt']}, replicas {pids} -> {stack.replica_pids()}")
                warms.append(warm.seconds)
                print(f"[{i + 1}/{args.repeat}] no-change: {warm.seconds:.1f}s "
                      f"(ran only the live-service checks: {', '.join(sorted(warm.materialized))})", flush=True)
        finally:
            stack.down()
            for image in client.images.list():  # the API images this benchmark built
                for tag in set(image.tags) - images_before:
                    if "mlops-api:" in tag:
                        client.images.remove(tag, force=True)
    warm = statistics.median(warms)
    print("\n| whole graph, local target (fresh process each) | seconds | / cold | target |")
    print("| --- | --- | --- | --- |")
    print(f"| cold `make run` (fresh state folder, warm machine caches) | {cold.seconds:.1f} | 100% | |")
    print(f"| no-change `make run` (median of {args.repeat}) | {warm:.1f} | {warm / cold.seconds:.0%} | <= 10% |")


if __name__ == "__main__":
    main()
