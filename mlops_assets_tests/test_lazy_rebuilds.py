"""Lazy rebuilds over the whole graph, local target, with real components: `cli run` (what
`make run` calls) on a stack of its own (scratch checkout, MLOPS_HOME, free ports, the
machine's Podman), through seven scenarios in order:

1. cold, on a first dataset whose two most telling columns carry no information (a weak but
   serviceable champion, promoted under a lowered quality floor given as run config);
2. no change: nothing is trained, no image is built, the API is not restarted;
3. new data with a better model: the whole chain rebuilds and the API serves the new version;
4. serving code changed (a developer's edit in the checkout): a new image and a redeployed API,
   no retraining;
5. new hyperparameters: retraining; the champion stays, so nothing downstream rebuilds;
6. a crash: the raylet alone (GCS left alive), Prometheus and node_exporter killed with
   SIGKILL; one `cli run` finds the Ray instance not whole, starts it again, and restarts both
   (the same run turns API keys on: /predict needs one, the smoke check sends one);
7. a run killed midway (SIGKILL while deployed_api swaps a new champion in): registry, API
   and deployed.json stay consistent, and the next run completes the deployment.

Needs root for the container engine (CI runs as root).
"""

import os
import signal
import time
from pathlib import Path

import polars as pl
import pytest
import requests

from mlops_assets_tests.lazy_stack import ASSETS, LocalStack, images_built_in, remove_images

pytestmark = [pytest.mark.stack, pytest.mark.root]

ML = {"dataset", "candidate_models", "selected_model"}
# In the local target these stand for this machine and its MLflow store (no OpenTofu, no
# Ansible): they are materialized once and never again while nothing changes.
MACHINE = {"tofu_state", "deployed_hosts", "tracking_server"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from mlops_assets.ml.data import _read_palmerpenguins
    from mlops_assets.rehearsal.engine import docker_client, docker_host

    root = tmp_path_factory.mktemp("lazy")
    penguins = _read_palmerpenguins()
    penguins.write_csv(root / "penguins.csv")
    # Bill length and flipper length made constant: the first champion has to do without them.
    penguins.with_columns(pl.lit(45.0).alias("bill_length_mm"), pl.lit(200.0).alias("flipper_length_mm")).write_csv(
        root / "penguins-weak.csv"
    )
    engine = docker_client()
    stack = LocalStack(root, docker_host=docker_host(), MLOPS_DATASET=str(root / "penguins-weak.csv"))
    stack.data = {"weak": root / "penguins-weak.csv", "full": root / "penguins.csv"}
    stack.outcomes = {}
    try:
        yield stack
    finally:
        stack.down()
        remove_images(engine, images_built_in(stack.home))  # this stack's images only
        engine.close()
        print("\nlazy rebuild scenarios (s, materialized):")
        for name, (seconds, materialized) in stack.outcomes.items():
            print(f"  {name:<32} {seconds:6.1f}  {', '.join(sorted(materialized)) or '-'}")


def _ok(run):
    assert run.returncode == 0, run.tail()
    return run


def _readyz(stack) -> dict:
    return requests.get(f"{stack.api_url}/readyz", timeout=10).json()


@pytest.fixture(scope="module")
def cold(stack, tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "floor.yaml"
    config.write_text("ops:\n  selected_model:\n    config:\n      quality_floor: 0.5\n")
    run = _ok(stack.cli("run", "--config", str(config)))
    stack.outcomes["1 cold"] = (run.seconds, run.materialized)
    return run


def test_cold_run_materializes_the_whole_graph(stack, cold):
    assert cold.materialized == set(ASSETS)
    assert stack.metadata("container_image")["rebuilt"] is True
    assert _readyz(stack)["model"]["version"] == "1"
    # Every asset pushed its metrics to the local Pushgateway, which Prometheus scrapes with
    # honor_labels (the pushed job); the last push (dashboards') lands within a scrape interval.
    from mlops_assets.monitoring import pipeline_metrics
    from mlops_assets.settings import load_settings
    from mlops_assets.targets import resources_for

    prometheus = resources_for(load_settings(stack.env))["monitoring"].prometheus
    # The stack's MLOPS_SCRAPE_INTERVAL is what the local Prometheus was rendered with.
    rendered = (stack.home / "monitoring/prometheus/prometheus.yml").read_text()
    interval = stack.env["MLOPS_SCRAPE_INTERVAL"]
    assert f"scrape_interval: {interval}" in rendered and f"evaluation_interval: {interval}" in rendered, rendered[:300]
    success = f'{pipeline_metrics.LAST_SUCCESS}{{job="{pipeline_metrics.JOB}", target="local"}} > 0'
    prometheus.wait_until(lambda: {r["metric"]["asset"] for r in prometheus.query(success)} == set(ASSETS), 60,
                          "every asset's pushed metrics in Prometheus")
    assert prometheus.query(f"{pipeline_metrics.CHAMPION_VERSION} == 1")


def test_no_change_trains_nothing_builds_nothing_and_keeps_the_api(stack, cold):
    pids = stack.replica_pids()
    image = stack.metadata("container_image")["tag"]
    assert pids, "no Serve replica found for this stack"
    run = _ok(stack.cli("run"))
    stack.outcomes["2 no change"] = (run.seconds, run.materialized)
    assert not run.materialized & (ML | MACHINE), run.tail()
    # Only the assets that look after live services ran, and each found everything in place.
    assert run.materialized <= {"container_image", "deployed_api", "dashboards"}
    meta = stack.metadata("container_image")
    assert meta["tag"] == image and meta["rebuilt"] is False and meta["model_downloaded"] is False
    assert stack.metadata("deployed_api")["action"] == "unchanged"
    assert stack.replica_pids() == pids  # the API was not restarted
    assert "nothing to download or build" in run.output
    # Up to one asset: only the live checks upstream of it (and it), nothing downstream.
    up_to_api = _ok(stack.cli("run", "deployed_api"))
    stack.outcomes["2b no change, run deployed_api"] = (up_to_api.seconds, up_to_api.materialized)
    assert up_to_api.materialized <= {"container_image", "deployed_api"}, up_to_api.tail()
    assert "deployed_api" in up_to_api.materialized and "dashboards" not in up_to_api.materialized


def test_new_data_with_a_better_model_rebuilds_the_chain(stack, cold):
    image = stack.metadata("container_image")["tag"]
    # `run deployed_api`: the chain up to the API, not the dashboards downstream of it.
    run = _ok(stack.cli("run", "deployed_api", MLOPS_DATASET=str(stack.data["full"])))
    stack.outcomes["3 new data, better model (run deployed_api)"] = (run.seconds, run.materialized)
    assert ML | {"container_image", "deployed_api"} <= run.materialized, run.tail()
    assert not run.materialized & (MACHINE | {"dashboards"}), run.tail()
    selected = stack.metadata("selected_model")
    assert selected["promoted"] is True and selected["champion_version"] == "2", selected["decision"]
    assert stack.metadata("container_image")["tag"] != image
    assert stack.metadata("container_image")["model_version"] == "2"
    assert _readyz(stack)["model"]["version"] == "2"
    answer = requests.post(f"{stack.api_url}/predict", json={"instances": [
        {"island": "Biscoe", "bill_length_mm": 48.6, "bill_depth_mm": 16.0, "flipper_length_mm": 230,
         "body_mass_g": 5800, "sex": "male"}]}, timeout=30).json()
    assert answer["model"]["version"] == "2" and answer["predictions"] == ["Gentoo"]
    # The whole graph afterwards: only the dashboards were left to follow the new data.
    rest = _ok(stack.cli("run", MLOPS_DATASET=str(stack.data["full"])))
    stack.outcomes["3b then run (the rest)"] = (rest.seconds, rest.materialized)
    assert "dashboards" in rest.materialized and not rest.materialized & (ML | MACHINE), rest.tail()


def test_serving_code_change_rebuilds_image_and_api_without_retraining(stack, cold):
    stack.env["MLOPS_DATASET"] = str(stack.data["full"])
    image = stack.metadata("container_image")["tag"]
    pids = stack.replica_pids()
    app = stack.checkout / "mlops_assets" / "serving" / "app.py"
    app.write_text(app.read_text() + "\n# a developer's change to the serving code\n")
    run = _ok(stack.cli("run"))
    stack.outcomes["4 serving code changed"] = (run.seconds, run.materialized)
    assert {"container_image", "deployed_api"} <= run.materialized, run.tail()
    assert not run.materialized & (ML | MACHINE), run.tail()
    assert stack.metadata("container_image")["rebuilt"] is True
    assert stack.metadata("container_image")["tag"] != image
    assert stack.metadata("deployed_api")["action"] != "unchanged"
    # New replicas run the new code; the old ones drain their requests and exit.
    deadline = time.monotonic() + 60
    while stack.replica_pids() & pids and time.monotonic() < deadline:
        time.sleep(1)
    now = stack.replica_pids()
    assert now and now.isdisjoint(pids), (pids, now)
    assert _readyz(stack)["model"]["version"] == "2"


def test_new_hyperparameters_retrain_and_nothing_downstream_rebuilds(stack, cold, tmp_path):
    stack.env["MLOPS_DATASET"] = str(stack.data["full"])
    image = stack.metadata("container_image")["tag"]
    pids = stack.replica_pids()
    config = tmp_path / "hyperparameters.yaml"
    config.write_text("ops:\n  candidate_models:\n    config:\n      random_forest:\n        n_estimators: 60\n")
    run = _ok(stack.cli("run", "--config", str(config)))
    stack.outcomes["5 new hyperparameters"] = (run.seconds, run.materialized)
    assert "training random_forest with {'n_estimators': 60" in run.output
    assert {"candidate_models", "selected_model"} <= run.materialized
    assert stack.metadata("selected_model")["promoted"] is False
    assert stack.metadata("selected_model")["champion_version"] == "2"
    # The champion stayed: no wave after selected_model; the live-service checks find
    # everything in place.
    assert not run.materialized & ({"dataset"} | MACHINE)
    assert stack.metadata("container_image")["tag"] == image
    assert stack.metadata("container_image")["rebuilt"] is False
    assert stack.metadata("deployed_api")["action"] == "unchanged"
    assert stack.replica_pids() == pids


def test_one_run_after_a_crash_restores_ray_prometheus_and_node_exporter(stack, cold):
    from mlops_assets.serving.runtime import _processes, instance_processes
    from mlops_assets.settings import load_settings
    from mlops_assets.targets import resources_for

    resources = resources_for(load_settings(stack.env))
    ray_serve, prometheus = resources["api_deployer"].ray_serve, resources["monitoring"].prometheus
    table = _processes()
    by_name = {}
    for pid in instance_processes(ray_serve.runtime()):
        by_name.setdefault(Path(table[pid][1].split(" ", 1)[0]).name, []).append(pid)
    (raylet,), (gcs,) = by_name["raylet"], by_name["gcs_server"]
    killed = {"raylet": raylet, "prometheus": prometheus.pid(), "node_exporter": prometheus.node_exporter_pid()}
    assert None not in killed.values(), killed
    for pid in killed.values():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
              for pid in killed.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert Path(f"/proc/{gcs}").exists()  # GCS alive: the instance answers but cannot serve
    assert ray_serve.missing_parts() == ["raylet"]

    # The same run turns API keys on: the replicas get the key file, the smoke check sends a key.
    run = _ok(stack.cli("run", MLOPS_API_KEYS="lazy-key-1,lazy-key-2"))
    stack.outcomes["6 crash recovery"] = (run.seconds, run.materialized)
    assert "is not whole (raylet gone)" in run.output, run.tail()
    assert "lazy-key" not in run.output
    champion = str(stack.metadata("selected_model")["champion_version"])
    assert _readyz(stack)["model"]["version"] == champion  # health checks need no key
    row = {"instances": [{"island": "Biscoe", "bill_length_mm": 45.0, "bill_depth_mm": 15.0,
                          "flipper_length_mm": 210.0, "body_mass_g": 5000.0, "sex": "male"}]}
    refused = requests.post(f"{stack.api_url}/predict", json=row, timeout=30)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer"), refused.text
    wrong = requests.post(f"{stack.api_url}/predict", json=row, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    answered = requests.post(f"{stack.api_url}/predict", json=row, headers={"Authorization": "Bearer lazy-key-2"}, timeout=30)
    assert answered.status_code == 200, answered.text
    # The keys reach the replicas through the key file, not Ray's processes' environment.
    for pid in instance_processes(ray_serve.runtime()):
        try:
            assert b"lazy-key" not in Path(f"/proc/{pid}/environ").read_bytes(), table.get(pid)
        except FileNotFoundError:
            pass
    assert ray_serve.is_running() and not ray_serve.missing_parts()
    assert prometheus.pid() not in (None, killed["prometheus"])
    assert prometheus.node_exporter_pid() not in (None, killed["node_exporter"])
    assert prometheus.wait_until(lambda: all(prometheus.targets_up().values()) and prometheus.targets_up(), 90,
                                 "every scrape target up again")


def _observed(stack) -> dict[str, str | None]:
    """The champion in the registry, the version the API serves, the version deployed.json names."""
    import json

    from mlops_assets.resources.mlflow_registry import MlflowRegistry
    from mlops_assets.settings import load_settings

    settings = load_settings(stack.env)
    champion = MlflowRegistry(tracking_uri=settings.tracking_uri).champion(settings.model_name)
    record = stack.home / "serving" / "deployed.json"
    try:
        served = _readyz(stack)["model"]["version"]
    except (requests.RequestException, KeyError, ValueError):
        served = None
    return {
        "registry": champion.version if champion else None,
        "api": str(served) if served is not None else None,
        "deployed.json": str(json.loads(record.read_text())["version"]) if record.exists() else None,
    }


def test_a_run_killed_midway_leaves_a_consistent_state_and_the_next_run_completes(stack, cold):
    """A `cli run` SIGKILLed while deployed_api swaps a new champion in: the registry may be a
    version ahead of the API, deployed.json still names the last healthy version, and the next
    run completes the deployment. (Formerly in test_failure_safety.py with a cold stack of its
    own; this stack is already warm.)"""
    import subprocess
    import sys

    from mlops_assets.ml.data import _read_palmerpenguins
    from mlops_assets_tests.serving_fixtures import wait_for

    import re

    before = _observed(stack)
    assert before["registry"] == before["api"] == before["deployed.json"] is not None, before
    # The same measurements with the species names rotated: the champion gets almost every
    # answer wrong, a model trained on them is as good as the first one: it is promoted.
    rotate = {"Adelie": "Gentoo", "Gentoo": "Chinstrap", "Chinstrap": "Adelie"}
    relabelled = stack.root / "penguins-relabelled.csv"
    _read_palmerpenguins().with_columns(pl.col("species").replace(rotate)).write_csv(relabelled)
    env = {**stack.env, "MLOPS_DATASET": str(relabelled)}

    log = stack.root / "cli-killed-midway.log"
    started = time.monotonic()
    with log.open("w") as out:
        killed = subprocess.Popen([sys.executable, "-m", "mlops_assets.cli", "run"], cwd=stack.checkout, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The new version's number: the registry also holds versions that were never promoted.
        applying = re.compile(rf"applying the Serve config of model version (?!{before['api']}\b)(\d+)")
        wait_for(lambda: applying.search(log.read_text()) or killed.poll() is not None, timeout=600, interval=0.1,
                 what=f"'{applying.pattern}' in {log}")
        assert killed.poll() is None, log.read_text()[-5000:]
        new = applying.search(log.read_text()).group(1)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
    kill_seconds = time.monotonic() - started
    after_kill = _observed(stack)
    # selected_model had moved the alias; the run never confirmed the new version healthy, so
    # deployed.json still names the old one, and the API answers (the old version, or the new
    # one if the apply got through before the kill).
    assert after_kill["registry"] == new and after_kill["deployed.json"] == before["deployed.json"], after_kill
    assert after_kill["api"] in (before["api"], new), after_kill

    rerun = _ok(stack.cli("run", MLOPS_DATASET=str(relabelled)))
    stack.outcomes["7 after a run killed midway"] = (rerun.seconds, rerun.materialized)
    assert f"version {new}" in rerun.output, rerun.tail()
    final = _observed(stack)
    assert final == {"registry": new, "api": new, "deployed.json": new}, final
    row = {"instances": [{"island": "Biscoe", "bill_length_mm": 45.0, "bill_depth_mm": 15.0,
                          "flipper_length_mm": 210.0, "body_mass_g": 5000.0, "sex": "male"}]}
    answer = requests.post(f"{stack.api_url}/predict", json=row, timeout=30)
    assert answer.status_code == 200 and str(answer.json()["model"]["version"]) == new, answer.text
    print(f"\nkilled run: killed {kill_seconds:.0f}s into the run: {after_kill}; the next run completed in "
          f"{rerun.seconds:.0f}s: {final}")
