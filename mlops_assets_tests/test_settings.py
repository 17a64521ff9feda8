"""Settings from the environment: MLOPS_LOCAL_PORTS (the local target's listeners, moved: a second
local stack beside `make run`), MLOPS_SCRAPE_INTERVAL and MLOPS_API_ACCESS_LOG."""

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


def test_access_log_is_off_unless_asked_and_reaches_serve_and_the_container_of_every_target(tmp_path):
    """MLOPS_API_ACCESS_LOG: Serve's per-request access log (off: it doubled the single-row p99)."""
    from mlops_assets.serving.container import ContainerSettings
    from mlops_assets.serving.deploy import serve_config

    def app_logging(config):
        return config["applications"][0]["logging_config"]

    for raw, on in ((None, False), ("0", False), ("1", True), ("TRUE", True), ("off", False)):
        env = {"MLOPS_HOME": str(tmp_path), **({"MLOPS_API_ACCESS_LOG": raw} if raw is not None else {})}
        api = resources_for(load_settings(env))["api_deployer"].ray_serve
        assert api.access_log is on
        assert app_logging(serve_config({}, {}, {}, access_log=api.access_log)) == {"enable_access_log": on}
        # The container reads the same variable; the api role sets it when the pipeline's is on.
        assert ContainerSettings.from_env({k: v for k, v in env.items() if k != "MLOPS_HOME"}).access_log is on
        for target in ("sim", "aws"):
            extra_vars = resources_for(load_settings({**env, "MLOPS_TARGET": target}))["host_configurator"].ansible.extra_vars
            assert extra_vars.get("api_env", {}).get("MLOPS_API_ACCESS_LOG") == ("1" if on else None)


@pytest.mark.parametrize("value", ["2", "maybe", "enabled"])
def test_a_bad_access_log_value_names_the_setting(value):
    from mlops_assets.serving.container import ContainerSettings

    with pytest.raises(SettingsError, match=rf"MLOPS_API_ACCESS_LOG='{value}' is neither on nor off; set it to 1 or 0"):
        load_settings({"MLOPS_API_ACCESS_LOG": value})
    with pytest.raises(SystemExit, match="MLOPS_API_ACCESS_LOG"):
        ContainerSettings.from_env({"MLOPS_API_ACCESS_LOG": value})


def test_dagster_yaml_follows_the_postgres_setting_and_never_holds_the_url(tmp_path):
    from mlops_assets.cli import DAGSTER_YAML_HEADER, write_dagster_yaml

    path = tmp_path / "dagster.yaml"
    path.touch()  # what earlier versions left: empty, the sqlite default
    url = "postgresql://mlops:s3cret@db.internal:5432/dagster"
    on = load_settings({"MLOPS_HOME": str(tmp_path), "MLOPS_DAGSTER_POSTGRES_URL": url})
    assert url not in repr(on)
    # dagster-postgres works through psycopg2 only; SQLAlchemy 2.1 would take psycopg 3 for postgresql://.
    assert on.dagster_postgres_url == "postgresql+psycopg2://mlops:s3cret@db.internal:5432/dagster"
    write_dagster_yaml(on, path)
    text = path.read_text()
    assert text.startswith(DAGSTER_YAML_HEADER) and "postgres_url:\n      env: MLOPS_DAGSTER_POSTGRES_URL" in text
    assert "s3cret" not in text
    write_dagster_yaml(load_settings({"MLOPS_HOME": str(tmp_path)}), path)  # unset again: back to sqlite
    assert "postgres" not in path.read_text().removeprefix(DAGSTER_YAML_HEADER)
    own = "storage:\n  postgres:\n    postgres_db:\n      hostname: team-db\n"
    path.write_text(own)  # a team's own file is left alone
    write_dagster_yaml(on, path)
    assert path.read_text() == own


@pytest.mark.parametrize("value", ["mysql://u:secret@h/db", "sqlite:///x.db", "team-db:5432/dagster"])
def test_a_dagster_postgres_url_that_is_not_postgresql_names_the_setting_and_hides_the_rest(value):
    with pytest.raises(SettingsError, match="MLOPS_DAGSTER_POSTGRES_URL is .* not a PostgreSQL URL") as error:
        load_settings({"MLOPS_DAGSTER_POSTGRES_URL": value})
    assert "secret" not in str(error.value) and "team-db" not in str(error.value)


def test_the_containers_cluster_settings_name_what_is_missing_and_build_the_cluster_commands(tmp_path, monkeypatch):
    """MLOPS_RAY_ROLE head/worker: the node's address, the head's, the token file and the
    ports are required or checked by name; the commands and Serve's config follow them."""
    from mlops_assets.serving.container import RAY_PORTS, ContainerSettings, runtime_for

    token = tmp_path / "token"
    token.write_text("t")
    worker = {"MLOPS_RAY_ROLE": "worker", "MLOPS_RAY_NODE_IP": "10.9.0.3", "MLOPS_RAY_HEAD_ADDRESS": "10.9.0.2",
              "RAY_AUTH_TOKEN_PATH": str(token), "MLOPS_STATE_DIR": str(tmp_path / "s")}
    for change, message in (
        ({"MLOPS_RAY_ROLE": "leader"}, "MLOPS_RAY_ROLE='leader': use single, head or worker"),
        ({"MLOPS_RAY_NODE_IP": ""}, "needs MLOPS_RAY_NODE_IP"),
        ({"MLOPS_RAY_HEAD_ADDRESS": ""}, "needs MLOPS_RAY_HEAD_ADDRESS"),
        ({"RAY_AUTH_TOKEN_PATH": ""}, "needs RAY_AUTH_TOKEN_PATH"),
        ({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "absent")}, "is not a file"),
        ({"MLOPS_RAY_PORTS": "gcs=6379,raylet=1"}, "MLOPS_RAY_PORTS names 'raylet'"),
        ({"MLOPS_RAY_PORTS": "gcs=six"}, "MLOPS_RAY_PORTS: 'gcs=six' is not gcs=NUMBER"),
        ({"MLOPS_AUTOSCALING": "min=3,max=2"}, "need 1 <= min <= max"),
        ({"MLOPS_AUTOSCALING": "per_node=0"}, "per_node >= 1"),
    ):
        with pytest.raises(SystemExit, match=message):
            ContainerSettings.from_env({**worker, **change})

    settings = ContainerSettings.from_env({**worker, "MLOPS_RAY_PORTS": "gcs=7000"})
    runtime = runtime_for(settings)
    command = runtime.start_command()
    assert command[1:4] == ["start", "--address=10.9.0.2:7000", "--node-ip-address=10.9.0.3"]
    assert f"--min-worker-port={RAY_PORTS['min_worker']}" in command and "--head" not in command
    env = runtime.environment()
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "0"
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("30000", "31000")
    # HAProxy's stats, metrics and the fallback proxy stay on loopback; Serve has a proxy per node.
    assert runtime.listen_host == "127.0.0.1" and runtime.http_options()["location"] == "EveryNode"

    head = runtime_for(ContainerSettings.from_env({**worker, "MLOPS_RAY_ROLE": "head", "MLOPS_RAY_NODE_IP": "10.9.0.2"}))
    assert head.start_command()[1:5] == ["start", "--head", "--port=6379", "--ray-client-server-port=10001"]
    # The single-node default is unchanged: everything on loopback.
    single = runtime_for(ContainerSettings.from_env({"MLOPS_STATE_DIR": str(tmp_path / "single")}))
    assert single.node_role is None and single.host == "127.0.0.1" and "--address" not in " ".join(single.start_command())
    from mlops_assets.serving.deploy import serve_config

    config = serve_config({}, {}, runtime.http_options(), autoscaling={"min_replicas": 1, "max_replicas": 4},
                          max_replicas_per_node=1)
    deployment = config["applications"][0]["deployments"][0]
    assert config["proxy_location"] == "EveryNode" and "location" not in config["http_options"]
    assert deployment["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4} and "num_replicas" not in deployment
    assert deployment["max_replicas_per_node"] == 1
    assert "proxy_location" not in serve_config({}, {}, single.http_options())
    # The head's MLOPS_AUTOSCALING reaches Serve's config: per_node is max_replicas_per_node.
    from mlops_assets.serving import container

    monkeypatch.setattr(container.model_lib, "features_of_folder", lambda folder: [])
    scaled = ContainerSettings.from_env({**worker, "MLOPS_RAY_ROLE": "head", "MLOPS_AUTOSCALING": "min=2,max=6,per_node=3"})
    deployment = container.serve_config_for(scaled, runtime_for(scaled))["applications"][0]["deployments"][0]
    assert deployment["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 2}
    assert deployment["max_replicas_per_node"] == 3
    # The head's role-written settings file is read instead of the variable; a missing one is named.
    (tmp_path / "autoscaling").write_text("min=3,max=5,target=1,per_node=1\n")
    from_file = ContainerSettings.from_env({**worker, "MLOPS_AUTOSCALING": "min=1", "MLOPS_AUTOSCALING_FILE": str(tmp_path / "autoscaling")})
    assert dict(from_file.autoscaling) == {"min": 3, "max": 5, "target": 1, "per_node": 1}
    with pytest.raises(SystemExit, match="MLOPS_AUTOSCALING_FILE .*absent.* cannot be read"):
        ContainerSettings.from_env({**worker, "MLOPS_AUTOSCALING_FILE": str(tmp_path / "absent")})
    (tmp_path / "autoscaling").write_text("min=3,replicas=5\n")
    with pytest.raises(SystemExit, match="MLOPS_AUTOSCALING_FILE .* names 'replicas'"):
        ContainerSettings.from_env({**worker, "MLOPS_AUTOSCALING_FILE": str(tmp_path / "autoscaling")})
    # `container apply` belongs to the head's container, `container drain` to a worker's (the
    # head holds the control plane); a refused drain leaves no drained mark behind.
    assert container.apply({**worker}) == 2
    head_env = {**worker, "MLOPS_RAY_ROLE": "head"}
    assert container.drain("request", head_env) == 2
    assert not (ContainerSettings.from_env(head_env).state_dir / container.DRAINED_MARK).exists()


def test_api_autoscaling_names_only_what_is_set_and_refuses_bad_values():
    from mlops_assets.settings import SettingsError, load_settings

    assert load_settings({}).api_autoscaling == ()
    assert load_settings({"MLOPS_API_AUTOSCALING": "min=2, target=3"}).api_autoscaling == (("min", 2), ("target", 3))
    assert load_settings({"MLOPS_API_AUTOSCALING": "per_node=3"}).api_autoscaling == (("per_node", 3),)
    for raw, named in (("min=0", "min <= max"), ("min=3,max=2", "min <= max"), ("replicas=2", "'replicas'"),
                       ("min=two", "min=NUMBER"), ("per_node=0", "per_node >= 1")):
        with pytest.raises(SettingsError) as refused:
            load_settings({"MLOPS_API_AUTOSCALING": raw})
        assert "MLOPS_API_AUTOSCALING" in str(refused.value) and named in str(refused.value), str(refused.value)


def test_the_heads_gcs_store_password_comes_from_its_file_and_a_wrong_setting_is_named(tmp_path):
    """Ray's GCS fault tolerance on the head: MLOPS_RAY_REDIS_PASSWORD_FILE needs Ray's
    RAY_REDIS_ADDRESS and an existing file; `ray start --head` then takes the password (Ray's
    only way); a worker ignores the file; without a store the command has no Redis option."""
    from mlops_assets.serving.container import ContainerSettings, runtime_for

    token, password = tmp_path / "token", tmp_path / "password"
    token.write_text("t")
    password.write_text("s3cret-redis-password\n")
    head = {"MLOPS_RAY_ROLE": "head", "MLOPS_RAY_NODE_IP": "10.9.0.2", "RAY_AUTH_TOKEN_PATH": str(token),
            "MLOPS_STATE_DIR": str(tmp_path / "s"), "RAY_REDIS_ADDRESS": "10.9.0.9:6379",
            "MLOPS_RAY_REDIS_PASSWORD_FILE": str(password)}
    for change, message in (
        ({"RAY_REDIS_ADDRESS": ""}, "MLOPS_RAY_REDIS_PASSWORD_FILE is set but RAY_REDIS_ADDRESS is not"),
        ({"MLOPS_RAY_REDIS_PASSWORD_FILE": str(tmp_path / "absent")}, "absent is not a file"),
    ):
        with pytest.raises(SystemExit, match=message):
            ContainerSettings.from_env({**head, **change})
    settings = ContainerSettings.from_env(head)
    command = runtime_for(settings).start_command()
    assert "--head" in command and command[-2:] == ["--redis-password=s3cret-redis-password", "--redis-username=default"]
    assert "s3cret" not in repr(settings)
    worker = ContainerSettings.from_env({**head, "MLOPS_RAY_ROLE": "worker", "MLOPS_RAY_HEAD_ADDRESS": "10.9.0.2",
                                         "MLOPS_RAY_NODE_IP": "10.9.0.3"})
    assert not any("redis" in part for part in runtime_for(worker).start_command())
    without = {k: v for k, v in head.items() if k != "MLOPS_RAY_REDIS_PASSWORD_FILE"}
    assert not any("redis" in part for part in runtime_for(ContainerSettings.from_env(without)).start_command())


def test_the_model_file_names_the_folder_the_replicas_load_and_a_bad_one_is_named(tmp_path):
    """MLOPS_MODEL_FILE (the `api` role writes it on the head): the folder, version, manifest and
    engine go into the deployment's user_config, so that `container apply` with a new file is
    Serve's in-place reconfigure; a file that is missing, not JSON, or lacks a key is named."""
    import json

    from mlops_assets.serving.container import ContainerSettings, runtime_for, serve_config_for

    folder = tmp_path / "models" / "penguins" / "7"
    folder.mkdir(parents=True)
    signature = json.dumps([{"name": "bill_length_mm", "type": "double"}, {"name": "island", "type": "string"}])
    (folder / "MLmodel").write_text(f"signature:\n  inputs: '{signature}'\n")
    model = {"dir": str(folder), "name": "penguins", "version": "7", "files_sha256": '{"MLmodel": "ab"}',
             "engine": "onnx", "engine_reason": ""}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    env = {"MLOPS_MODEL_FILE": str(path), "MLOPS_MODEL_DIR": "/opt/model", "MLOPS_STATE_DIR": str(tmp_path / "s")}
    settings = ContainerSettings.from_env(env)
    assert settings.model_dir == folder and settings.expected_version == "7"
    config = serve_config_for(settings, runtime_for(settings))
    user_config = config["applications"][0]["deployments"][0]["user_config"]
    assert user_config == {"model_uri": str(folder), "model_name": "penguins", "model_version": "7",
                           "model_files_sha256": '{"MLmodel": "ab"}', "serving_engine": "onnx"}
    for content, message in (
        (None, r"MLOPS_MODEL_FILE \(.*model.json\) cannot be read"),
        ("{not json", "is not JSON"),
        (json.dumps([1]), "must be a JSON object"),
        (json.dumps({**model, "files_sha256": ""}), "needs `files_sha256`"),
        (json.dumps({**model, "dir": "models/7"}), "`dir` must be an absolute path"),
        (json.dumps({**model, "port": 1}), r"unknown key\(s\) port"),
    ):
        path.unlink(missing_ok=True)
        if content is not None:
            path.write_text(content)
        with pytest.raises(SystemExit, match=message):
            ContainerSettings.from_env(env)


def test_wait_version_needs_a_replica_of_every_node_and_stops_at_a_refusal(monkeypatch, capsys):
    """`container wait-version` (the api role's wait after an in-place model update) against a
    loopback /readyz that answers as a cluster's proxy does: from replicas on several nodes
    (X-Served-By), in the order scripted here."""
    import http.server
    import json
    import threading

    from mlops_assets.serving import container

    answers: list[tuple[str, dict]] = []

    class Readyz(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            node, body = answers.pop(0) if len(answers) > 1 else answers[0]
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("X-Served-By", node)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLOPS_API_PORT", str(server.server_address[1]))
    v = lambda version, **more: {"status": "ready", "model": {"name": "m", "version": version}, **more}  # noqa: E731
    try:
        # Both nodes answer the new version (the worker's after an old answer): done.
        answers[:] = [("10.0.0.1", v("2")), ("10.0.0.2", v("1")), ("10.0.0.2", v("2"))]
        assert container.main(["wait-version", "2", "10.0.0.1", "10.0.0.2"]) == 0
        assert "every node (10.0.0.1, 10.0.0.2) serves model version 2" in capsys.readouterr().out
        # Only the head's replica ever answers: the worker is named as not answering.
        answers[:] = [("10.0.0.1", v("2"))]
        assert container.main(["wait-version", "2", "10.0.0.1", "10.0.0.2"]) == 1
        assert '"10.0.0.2": "no answer"' in capsys.readouterr().err
        # The worker's replica refused it (it keeps version 1): stops at once, with the reason.
        answers[:] = [("10.0.0.1", v("2")),
                      ("10.0.0.2", v("1", rejected={"version": "2", "error": "model.skops differs from its manifest"})),
                      ("10.0.0.2", v("2"))]
        assert container.main(["wait-version", "2", "10.0.0.1", "10.0.0.2"]) == 1
        assert "a replica refused model version 2: model.skops differs from its manifest" in capsys.readouterr().err
        assert len(answers) == 1  # the third answer was never asked for
    finally:
        server.shutdown()
