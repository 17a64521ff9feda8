"""Alerts delivered, for real, on loopback: the local Prometheus and Alertmanager that `make run`
starts (LocalPrometheus), with the rendered configuration (timings shortened as a test may), an
API metrics target that is down, and a webhook receiver this test runs on 127.0.0.1.
MlopsApiTargetDown reaches the receiver as `firing`; once the target answers, the resolved
notice arrives too. Then `stop()` ends the Alertmanager with the rest."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlops_assets.monitoring import render
from mlops_assets.monitoring.alertmanager_config import AlertRouting, parse_timings
from mlops_assets.monitoring.rules import AlertSettings
from mlops_assets.resources.monitoring import Rendered, rules_loaded
from mlops_assets.resources.prometheus import Amtool, LocalPrometheus, Promtool
from mlops_assets_tests.serving_fixtures import free_ports

pytestmark = pytest.mark.service


class Receiver:
    """A webhook receiver on 127.0.0.1: records the body of every POST."""

    def __init__(self) -> None:
        self.notices: list[dict] = []
        received = self.notices

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, alert: str, status: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for notice in list(self.notices):
                if notice["status"] == status and any(a["labels"]["alertname"] == alert for a in notice["alerts"]):
                    return notice
            time.sleep(0.2)
        raise AssertionError(f"no {status} notice of {alert} within {timeout_s:.0f}s; received {self.notices}")


class MetricsTarget:
    """The API's metrics endpoint stand-in: down until `start()`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server = None

    def start(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"# TYPE mlops_stand_in gauge\nmlops_stand_in 1\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def test_target_down_is_delivered_to_the_webhook_and_so_is_its_resolution(tmp_path):
    from mlops_assets.ml.data import DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec, build_dataset
    from mlops_assets.monitoring.profile import training_profile

    prometheus_port, alertmanager_port, api_port = free_ports(3)
    prometheus = LocalPrometheus(state_dir=str(tmp_path / "prometheus"), port=prometheus_port, node_exporter=False,
                                 pushgateway=False, alertmanager_port=alertmanager_port)
    receiver, target = Receiver(), MetricsTarget(api_port)
    timings, target_down_for = parse_timings("group_wait=1s,group_interval=2s,target_down_for=3s")
    settings = render.RenderSettings(
        api_targets=(f"127.0.0.1:{api_port}",), alertmanager_targets=(prometheus.alertmanager_target,),
        scrape_interval="1s", evaluation_interval="1s", alerts=AlertSettings(target_down_for=target_down_for),
        routing=AlertRouting(webhook_url=receiver.url, timings=timings))
    profile = training_profile(build_dataset(DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec()))
    files = render.render_all(profile, settings)
    render.write(files, tmp_path / "out")
    rendered = Rendered.of(tmp_path / "out", render.content_hash(files), 0, settings.api_targets[0])
    Promtool().test_rules(rendered.tests_file)  # the shortened `for` keeps its unit tests true
    Amtool().check_config(rendered.alertmanager_file)
    started = time.monotonic()
    try:
        prometheus.ensure_running(rendered.config_file, alertmanager_config=rendered.alertmanager_file)
        assert prometheus.alertmanager_pid() is not None
        http = prometheus.http
        http.wait_until(lambda: rules_loaded(http) > 0, timeout_s=30, what="the rules to be loaded")
        firing = receiver.wait_for("MlopsApiTargetDown", "firing", timeout_s=45)
        fired_after = time.monotonic() - started
        alert = next(a for a in firing["alerts"] if a["labels"]["alertname"] == "MlopsApiTargetDown")
        assert alert["labels"]["severity"] == "critical" and alert["labels"]["instance"] == settings.api_targets[0]
        assert firing["receiver"] == "mlops-critical"
        target.start()
        resolved = receiver.wait_for("MlopsApiTargetDown", "resolved", timeout_s=45)
        assert resolved["receiver"] == "mlops-critical"
        print(f"\nfiring delivered after {fired_after:.1f}s, resolved after {time.monotonic() - started:.1f}s")
    finally:
        target.stop()
        alertmanager = prometheus.alertmanager_pid()
        prometheus.stop()
        receiver.server.shutdown()
    assert alertmanager is not None and prometheus.alertmanager_pid() is None
