"""The prediction API on a real Ray Serve instance, over real HTTP on 127.0.0.1: answers,
bad input, OpenAPI, metrics, and a schemathesis run."""

import dataclasses
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from .serving_fixtures import PROBABILITY_TOLERANCE, as_instances, wait_for

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def pipeline(serving_api, trained_home):
    from mlops_assets.resources.mlflow_registry import MlflowRegistry

    registry = MlflowRegistry(tracking_uri=serving_api.tracking_uri)
    return registry.load_model(trained_home["selected"].model_uri)


@pytest.fixture
def good_instance(test_split):
    return as_instances(test_split[0].head(1))[0]


def test_predictions_equal_the_pipelines_own(serving_api, pipeline, test_split):
    x_test, _ = test_split
    response = serving_api.predict(as_instances(x_test))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["predictions"] == [str(v) for v in pipeline.predict(x_test)]
    assert body["model"] == {"name": serving_api.model_name, "version": serving_api.versions[-1]}
    proba = np.array([[row[c] for c in pipeline.classes_] for row in body["probabilities"]])
    # The scikit-learn engine is the pipeline itself; ONNX Runtime computes in float32.
    tolerance = PROBABILITY_TOLERANCE[serving_api.engine]
    np.testing.assert_allclose(proba, pipeline.predict_proba(x_test), rtol=0, atol=tolerance)
    if serving_api.engine == "sklearn":
        np.testing.assert_allclose(proba, pipeline.predict_proba(x_test), rtol=1e-9, atol=1e-12)
    # Row by row too (each request its own, batched with others or not).
    for i in range(5):
        single = serving_api.predict(as_instances(x_test.iloc[[i]])).json()
        assert single["predictions"] == [str(pipeline.predict(x_test.iloc[[i]])[0])]


def test_null_means_missing_and_is_imputed(serving_api, pipeline, test_split):
    x_test, _ = test_split
    row = as_instances(x_test.head(1))[0]
    row = {k: None for k in row}  # every feature missing
    response = serving_api.predict([row])
    assert response.status_code == 200, response.text
    frame = x_test.head(1).copy()
    for column in frame:
        frame[column] = np.nan if frame[column].dtype.kind == "f" else None
    assert response.json()["predictions"] == [str(pipeline.predict(frame)[0])]


def _post_raw(serving_api, data, headers=None):
    return requests.post(
        f"{serving_api.url}/predict", data=data, headers={"Content-Type": "application/json", **(headers or {})}, timeout=30
    )


def _bad_inputs(good: dict):
    numeric = next(k for k, v in good.items() if isinstance(v, float))
    text = next(k for k, v in good.items() if isinstance(v, str))
    one = lambda **change: json.dumps({"instances": [{**good, **change}]})  # noqa: E731
    missing = {k: v for k, v in good.items() if k != text}
    raw_nan = json.dumps({"instances": [good]}).replace(json.dumps(good[numeric]), "NaN", 1)
    raw_inf = json.dumps({"instances": [good]}).replace(json.dumps(good[numeric]), "-Infinity", 1)
    return [
        ("unknown feature", one(wing_span_mm=3.0), "instances[0].wing_span_mm", "unknown feature"),
        ("missing feature", json.dumps({"instances": [missing]}), f"instances[0].{text}", "missing"),
        ("string for a number", one(**{numeric: "12.5"}), f"instances[0].{numeric}", "valid number"),
        ("boolean for a number", one(**{numeric: True}), f"instances[0].{numeric}", "valid number"),
        ("number for a string", one(**{text: 3}), f"instances[0].{text}", "valid string"),
        ("NaN literal", raw_nan, f"instances[0].{numeric}", "finite"),
        ("Infinity literal", raw_inf, f"instances[0].{numeric}", "finite"),
        ("empty list", json.dumps({"instances": []}), "instances", "at least 1"),
        ("too many rows", json.dumps({"instances": [good] * 1001}), "instances", "at most 1000"),
        ("no instances key", json.dumps({"rows": [good]}), "instances", "missing"),
        ("instances not a list", json.dumps({"instances": good}), "instances", "valid list"),
        ("not JSON", "{instances: [", "body", "JSON"),
    ]


@pytest.mark.parametrize("case", range(12))
def test_bad_input_gets_422_naming_the_field(serving_api, good_instance, case):
    name, body, field, words = _bad_inputs(good_instance)[case]
    response = _post_raw(serving_api, body)
    assert response.status_code == 422, f"{name}: {response.status_code} {response.text[:300]}"
    details = response.json()["detail"]
    assert any(d["field"].startswith(field) for d in details), f"{name}: {details}"
    assert any(words.lower() in d["message"].lower() for d in details), f"{name}: {details}"
    assert serving_api.predict([good_instance]).status_code == 200  # still answers


def test_body_over_the_limit_gets_413(serving_api, good_instance):
    limit = serving_api.resource.max_body_bytes
    padding = json.dumps({"instances": [good_instance], "pad": "x" * (limit + 10)})
    response = _post_raw(serving_api, padding)
    assert response.status_code == 413
    assert response.json()["detail"][0]["field"] == "body"
    assert str(limit) in response.json()["detail"][0]["message"]

    def chunks():  # no Content-Length: the size is counted while reading
        yield b'{"instances": [], "pad": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    response = requests.post(f"{serving_api.url}/predict", data=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert serving_api.predict([good_instance]).status_code == 200


def test_health_readiness_and_openapi_describe_the_model(serving_api):
    assert requests.get(f"{serving_api.url}/healthz", timeout=30).json() == {"status": "alive"}
    ready = requests.get(f"{serving_api.url}/readyz", timeout=30).json()
    assert ready["model"]["name"] == serving_api.model_name
    assert ready["engine"] == serving_api.engine
    # Why scikit-learn serves, when it does (here the deployment asked for it); nothing for ONNX.
    assert ("engine_reason" in ready) == (serving_api.engine == "sklearn"), ready
    spec = requests.get(f"{serving_api.url}/openapi.json", timeout=30).json()
    instance = spec["components"]["schemas"]["Instance"]
    assert list(instance["properties"]) == serving_api.features
    assert instance["additionalProperties"] is False
    types = {name: {t.get("type") for t in prop["anyOf"]} for name, prop in instance["properties"].items()}
    assert types["bill_length_mm"] == {"number", "null"} and types["island"] == {"string", "null"}
    assert requests.get(f"{serving_api.url}/docs", timeout=30).status_code == 200


def _scrape(url: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple, float] = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=10).text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("replica", "WorkerId", "Component", "SessionName", "NodeAddress", "Version", "instance", "job")))
            key = (sample.name, labels)
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def _total(samples, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_metrics_endpoint_serves_the_documented_series(serving_api, good_instance):
    from mlops_assets.serving.metrics import METRICS

    # Earlier tests' requests may still be on their way to the exporter: start from a still state.
    def still():
        first = _scrape(serving_api.metrics_url)
        time.sleep(2.5)
        second = _scrape(serving_api.metrics_url)
        keys = [k for k in second if k[0] in ("ray_mlops_api_requests_total", "ray_mlops_api_predictions_total")]
        return second if all(first.get(k) == second[k] for k in keys) else None

    before = wait_for(still, timeout=60, interval=0.1, what="the metrics to stop changing")
    ok, bad = 5, 3
    for _ in range(ok):
        assert serving_api.predict([good_instance, good_instance]).status_code == 200
    for _ in range(bad):
        assert serving_api.predict([]).status_code == 422
    expected = {
        ("ray_mlops_api_requests_total", (("route", "/predict"), ("status", "200"))): ok,
        ("ray_mlops_api_requests_total", (("route", "/predict"), ("status", "422"))): bad,
    }

    seen = {}

    def settled():
        now = _scrape(serving_api.metrics_url)
        deltas = {
            key: _total(now, key[0], **dict(key[1])) - _total(before, key[0], **dict(key[1])) for key in expected
        }
        rows = _total(now, "ray_mlops_api_predictions_total") - _total(before, "ray_mlops_api_predictions_total")
        seen.update(deltas=deltas, rows=rows)
        return (now, deltas, rows) if deltas == expected and rows == 2 * ok else None

    now, _, _ = wait_for(
        settled, timeout=45, interval=1.0, what="the metrics exporter to report the requests", last=lambda: seen
    )
    names = {name for name, _ in now}
    for name in METRICS:
        present = {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"} & names
        assert present, f"{name} missing from {serving_api.metrics_url}"
    assert any(n.startswith("ray_serve_") for n in names)
    assert _total(now, "ray_mlops_api_model_info", model_version=serving_api.versions[-1], engine=serving_api.engine) >= 1
    feature = serving_api.features[0]
    assert _total(now, "ray_mlops_api_feature_value_count", feature=feature) >= 2 * ok
    assert _total(now, "ray_mlops_api_request_latency_seconds_count", route="/predict") >= ok + bad


def test_nothing_listens_beyond_loopback(serving_api):
    from mlops_assets.serving.runtime import instance_processes

    pids = set(instance_processes(serving_api.resource.runtime()))
    listeners = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
    exposed = []
    for line in listeners:
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if owners & pids and not line.split()[3].startswith(loopback):
            exposed.append(line)
    assert len(pids) > 5  # the instance was found: gcs, raylet, agents, controller, replicas, haproxy
    assert not exposed, "listening beyond loopback:\n" + "\n".join(exposed)


def test_schemathesis_finds_no_server_error(serving_api, good_instance, tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{serving_api.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--seed",
            "7",
            "--request-timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # A clean exit proves little unless every operation of the schema was fuzzed: the summary
    # says how many were selected and tested, and how many cases were generated.
    summary = result.stdout
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    tested = re.search(r"Tested: (\d+)", summary)
    cases = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert selected and tested and cases, summary[-3000:]
    assert int(selected.group(2)) >= 3 and int(tested.group(1)) == int(selected.group(2)), summary[-3000:]
    assert int(cases.group(1)) >= 40 and cases.group(1) == cases.group(2), summary[-3000:]
    print(f"schemathesis: {tested.group(1)} operations, {cases.group(1)} cases in {time.monotonic() - started:.0f}s")
    assert serving_api.predict([good_instance]).status_code == 200


def test_deployed_api_asset_with_the_same_champion_restarts_nothing(serving_api, trained_home):
    import dagster as dg

    from mlops_assets.assets.deployment import deployed_api
    from mlops_assets.ml.data import SplitSpec, build_dataset
    from mlops_assets.resources.api_deployer import RayServeOnThisMachine
    from mlops_assets.serving.runtime import _processes, instance_processes

    def replicas():
        table = _processes()
        return sorted(p for p in instance_processes(serving_api.resource.runtime()) if table[p][1].startswith("ray::ServeReplica"))

    before = replicas()
    # The champion as selected_model reports it, with the engine the replicas use now.
    selected = dataclasses.replace(trained_home["selected"], version=serving_api.versions[-1], engine=serving_api.engine,
                                   model_uri=f"models:/{serving_api.model_name}/{serving_api.versions[-1]}")
    output = deployed_api(
        context=dg.build_asset_context(),
        api_deployer=RayServeOnThisMachine(ray_serve=serving_api.resource),
        selected_model=selected,
        dataset=build_dataset("palmerpenguins", "species", SplitSpec()),
        # The local target: no hosts to configure, the image is not used by the local API.
        container_image=None,
        deployed_hosts=None,
    )
    assert output.value.action == "unchanged"
    assert output.data_version == dg.DataVersion(f"{selected.name}/{selected.version}")
    assert output.metadata["model_version"].value == selected.version
    assert len(output.metadata["smoke_predictions"].value) == 3
    assert output.metadata["smoke_latency_ms"].value > 0
    assert replicas() == before


def test_deployed_apis_check_confirms_the_version_and_names_a_host_that_differs(serving_api):
    """`serves_its_version_on_every_host`: passes on the API that serves the version, fails
    naming the host and both versions when it serves another, and naming a host that does not
    answer; it deploys nothing."""
    from mlops_assets.checks import READYZ_PROBES, serves_its_version_on_every_host
    from mlops_assets.resources.api_deployer import DeployedApi
    from mlops_assets.serving.client import ApiClient

    version = serving_api.versions[-1]
    api = DeployedApi(url=serving_api.url, metrics_url=f"{serving_api.url}/metrics", model_name=serving_api.model_name,
                      model_version=version, action="unchanged")
    result = serves_its_version_on_every_host(deployed_api=api)
    assert result.passed, result.description
    assert result.description == f"all 1 API host(s) answer ready with model version {version}"
    assert f"| {serving_api.url} | {version} | {serving_api.engine} | - | 0 of {READYZ_PROBES} |" in result.metadata["hosts"].value

    with socket.socket() as closed:  # a loopback port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
    wrong = dataclasses.replace(api, model_version="999", urls=(serving_api.url, nobody))
    result = serves_its_version_on_every_host(deployed_api=wrong)
    assert not result.passed and result.severity.value == "ERROR"
    assert result.description.startswith("2 of 2 API host(s) do not serve model version 999: "), result.description
    assert f"{serving_api.url} answered model version {version}, expected 999" in result.description
    assert f"{nobody}: /readyz did not answer" in result.description and "make run" in result.description
    assert ApiClient(serving_api.url).ready_version() == version  # nothing was redeployed
