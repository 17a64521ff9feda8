"""Settings from the environment: MLOPS_LOCAL_PORTS (the local target's listeners, moved: a second
local stack beside `make run`) and MLOPS_SCRAPE_INTERVAL."""

import pytest

from mlops_assets.settings import LOCAL_PORTS, SettingsError, load_settings
from mlops_assets.targets import resources_for

pytestmark = pytest.mark.unit


def test_local_ports_move_every_local_listener(tmp_path):
    settings = load_settings({
        "MLOPS_HOME": str(tmp_path),
        "MLOPS_LOCAL_PORTS": "api=18000, metrics=18080,ray_gcs=16379,ray_client=20001,haproxy_metrics=19101,"
                             "haproxy_stats=18404,serve_fallback=18500,replicas=33000-33099,prometheus=19090,"
                             "node_exporter=19100,alertmanager=19093",
    })
    resources = resources_for(settings)
    api, prometheus = resources["api_deployer"].ray_serve, resources["monitoring"].prometheus
    assert (api.api_port, api.metrics_port, api.gcs_port, api.client_port) == (18000, 18080, 16379, 20001)
    assert (api.haproxy_metrics_port, api.haproxy_stats_port, api.fallback_proxy_port) == (19101, 18404, 18500)
    assert (api.replica_port_min, api.replica_port_max) == (33000, 33099)
    assert (prometheus.port, prometheus.node_exporter_port, prometheus.alertmanager_port) == (19090, 19100, 19093)
    assert settings.prometheus_url == "http://127.0.0.1:19090"  # what the drift sensor reads
    inventory = resources["infrastructure"].provision(lambda message: None).outputs["ansible_inventory"]
    assert inventory["all"]["vars"] == {"api_port": 18000, "metrics_port": 18080}


def test_without_the_setting_the_ports_are_the_documented_defaults(tmp_path):
    api = resources_for(load_settings({"MLOPS_HOME": str(tmp_path)}))["api_deployer"].ray_serve
    assert (api.api_port, api.metrics_port, api.gcs_port) == (8000, 8080, 6379)
    assert LOCAL_PORTS["prometheus"] == 9090


@pytest.mark.parametrize("value, words", [
    ("apii=18000", "names 'apii'; use any of api, metrics"),
    ("api=eighty", "'api=eighty' is not api=a port number"),
    ("replicas=33000", "is not replicas=LOW-HIGH"),
    ("replicas=60000-64000", "is not replicas=LOW-HIGH"),  # its gRPC ports would not fit
])
def test_a_bad_value_names_the_setting_and_the_form(value, words):
    with pytest.raises(SettingsError, match="MLOPS_LOCAL_PORTS") as error:
        load_settings({"MLOPS_LOCAL_PORTS": value})
    assert words in str(error.value)


def test_scrape_interval_reaches_the_monitoring_resource_of_every_target(tmp_path):
    """MLOPS_SCRAPE_INTERVAL: Prometheus's scrape and evaluation interval, 15s unless set; on
    the monitoring host deployed_hosts writes the same prometheus.yml as `dashboards`."""
    for target in ("local", "sim", "aws"):
        env = {"MLOPS_HOME": str(tmp_path), "MLOPS_TARGET": target}
        for setting, interval in (({}, "15s"), ({"MLOPS_SCRAPE_INTERVAL": "1m30s"}, "1m30s")):
            resources = resources_for(load_settings({**env, **setting}))
            assert resources["monitoring"].scrape_interval == interval
            if target != "local":
                extra_vars = resources["host_configurator"].ansible.extra_vars
                assert (extra_vars["prometheus_scrape_interval"], extra_vars["prometheus_evaluation_interval"]) == (interval, interval)


@pytest.mark.parametrize("value", ["5", "5 s", "0s", "10m", "fast"])
def test_a_bad_scrape_interval_names_the_setting(value):
    with pytest.raises(SettingsError, match=r"MLOPS_SCRAPE_INTERVAL=.* is not a Prometheus duration from 1s to 5m"):
        load_settings({"MLOPS_SCRAPE_INTERVAL": value})
