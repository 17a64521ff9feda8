"""Every environment setting of the project, parsed once.

Every project setting is read here, once, when `build_definitions(settings)` or the CLI asks
(importing a module reads nothing); docs/operations.md's configuration table mirrors this
module. A few variables belong to the tool they configure and are read where it is wrapped, at
run time: DOCKER_HOST (resources/container_engine.py), MLOPS_GRAFANA_ADMIN_PASSWORD and
MLOPS_PROMETHEUS_PASSWORD (passed to Ansible by resources/ansible.py; the latter also read by
resources/monitoring.py and resources/prometheus_api.py), MLOPS_ALERT_SMTP_PASSWORD (written to a
0600 file for Alertmanager by resources/monitoring.py), MLOPS_HAPROXY_BINARY (serving/runtime.py), and the API
container's own settings (serving/container.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

TARGETS = ("local", "sim", "aws")

# The local target's listeners (all on 127.0.0.1) and their defaults; MLOPS_LOCAL_PORTS moves
# any of them, e.g. to run a second local stack (a test's) beside `make run`.
LOCAL_PORTS = {
    "api": 8000,  # the prediction API (HAProxy in front of the replicas)
    "metrics": 8080,  # Ray's metrics export (the API's series too)
    "ray_gcs": 6379,
    "ray_client": 10001,
    "haproxy_metrics": 9101,
    "haproxy_stats": 8404,
    "serve_fallback": 8500,  # Serve's own proxy, HAProxy's backup
    "replicas": (30000, 31000),  # each replica's HTTP port; gRPC ports follow the range
    "prometheus": 9090,
    "node_exporter": 9100,
    "pushgateway": 9091,  # the pipeline's metrics (monitoring/pipeline_metrics.py), scraped by Prometheus
    "alertmanager": 9093,  # delivers Prometheus's alerts (monitoring/alertmanager_config.py)
}


class SettingsError(ValueError):
    """An environment variable has a value the project cannot use."""


@dataclass(frozen=True)
class Settings:
    home: Path
    target: str
    dataset: str | None
    target_column: str | None
    tracking_uri: str
    tracking_uri_configured: bool  # MLFLOW_TRACKING_URI was set (sim/aws then deploy no tracking server)
    mlflow_ui_url: str
    model_name: str
    # Automation (schedules and sensors; see automation.py)
    retrain_cron: str = "0 3 * * *"
    prometheus_url: str = "http://127.0.0.1:9090"
    # sim/aws: the Pushgateway the pipeline pushes its metrics to (MLOPS_PUSHGATEWAY_URL); none:
    # the monitoring host's, once deployed_hosts ran (the local target pushes to its own gateway
    # on loopback).
    pushgateway_url: str | None = None
    # Where Alertmanager delivers the alerts (monitoring/alertmanager_config.py): a webhook
    # (MLOPS_ALERT_WEBHOOK_URL) and/or e-mail (MLOPS_ALERT_SMTP_SMARTHOST, _FROM, _TO, _USERNAME;
    # the password from MLOPS_ALERT_SMTP_PASSWORD at run time). Checked where they are used, so a
    # wrong value fails the `dashboards` asset with a message naming the variable.
    alert_webhook_url: str | None = field(default=None, repr=False)  # may carry a token
    alert_smtp: dict = field(default_factory=dict, hash=False)
    # MLOPS_ALERT_TIMINGS: Alertmanager's group_wait/group_interval/repeat_interval per severity
    # and the target-down alert's `for` (tests shorten them), "name=DURATION,..." unparsed.
    alert_timings: str = ""
    # MLOPS_SCRAPE_INTERVAL: Prometheus's scrape and rule-evaluation interval, local and on the
    # monitoring host (the `dashboards` config can still set each for one run).
    scrape_interval: str = "15s"
    # (the drift threshold and window live with the rules: monitoring/rules.py)
    drift_cooldown_minutes: float = 60.0
    # Container image (assets/packaging.py): registry to push to in the aws target, e.g. ECR.
    image_registry: str | None = None
    # aws: the private key Ansible uses for the EC2 hosts (MLOPS_SSH_PRIVATE_KEY).
    ssh_private_key: str | None = None
    # How long `cli run` waits for another run on the same MLOPS_HOME (MLOPS_RUN_LOCK_TIMEOUT).
    run_lock_timeout_s: float = 1800.0
    # The local target's ports: LOCAL_PORTS with MLOPS_LOCAL_PORTS applied.
    local_ports: dict = field(default_factory=lambda: dict(LOCAL_PORTS), hash=False)
    # The public API's timeouts: serving.runtime.API_TIMEOUTS with MLOPS_API_TIMEOUTS applied.
    api_timeouts: dict = field(default_factory=lambda: _api_timeouts(""), hash=False)
    # API keys for POST /predict (docs/security.md): a file of keys (MLOPS_API_KEY_FILE), or
    # the keys themselves (MLOPS_API_KEYS, comma-separated; never printed: repr=False).
    api_key_file: Path | None = None
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # MLOPS_API_ACCESS_LOG: Ray Serve's per-request access log in the replicas' log files. Off by
    # default: writing it cost 3.5% of the replica's CPU and doubled the single-row p99
    # (21 ms -> 10-12 ms without it, docs/performance.md); the request metrics count every request.
    api_access_log: bool = False
    # MLOPS_API_AUTOSCALING: Serve autoscaling over a Ray cluster of API hosts (aws/sim with
    # api_instance_count > 1): "min=1,max=10,target=2" (replicas, requests in flight per replica),
    # any of them; empty: the api role's defaults.
    api_autoscaling: tuple = ()
    # MLOPS_DAGSTER_POSTGRES_URL: Dagster's runs, event logs and schedules in PostgreSQL instead
    # of sqlite files in DAGSTER_HOME (docs/operations.md, "State on PostgreSQL"). The URL may
    # carry a password: never printed, and dagster.yaml names the variable, not its value.
    dagster_postgres_url: str | None = field(default=None, repr=False)

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def artifact_root(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def io_dir(self) -> Path:
        return self.home / "storage"


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("MLOPS_HOME") or PROJECT_ROOT / ".mlops").expanduser().resolve()
    target = env.get("MLOPS_TARGET", "local") or "local"
    if target not in TARGETS:
        raise SettingsError(
            f"MLOPS_TARGET={target!r} is not a known target; set it to one of {', '.join(TARGETS)}"
        )
    tracking_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    local_ports = _local_ports(env.get("MLOPS_LOCAL_PORTS") or "")
    if env.get("MLOPS_API_KEYS") and target != "local":
        raise SettingsError(
            f"MLOPS_API_KEYS works for the local target only; for {target}, put the keys in a file (one a line) "
            "and set MLOPS_API_KEY_FILE: the api role copies it to the host and mounts it into the container"
        )
    return Settings(
        home=home,
        target=target,
        dataset=env.get("MLOPS_DATASET") or None,
        target_column=env.get("MLOPS_TARGET_COLUMN") or None,
        tracking_uri=tracking_uri,
        tracking_uri_configured=bool(env.get("MLFLOW_TRACKING_URI")),
        mlflow_ui_url=(env.get("MLOPS_MLFLOW_UI_URL") or _default_ui_url(tracking_uri)).rstrip("/"),
        model_name=_model_name(env.get("MLOPS_MODEL_NAME") or "mlops-assets-classifier"),
        retrain_cron=env.get("MLOPS_RETRAIN_CRON") or "0 3 * * *",
        prometheus_url=(env.get("MLOPS_PROMETHEUS_URL") or f"http://127.0.0.1:{local_ports['prometheus']}").rstrip("/"),
        pushgateway_url=(env.get("MLOPS_PUSHGATEWAY_URL") or "").rstrip("/") or None,
        alert_webhook_url=env.get("MLOPS_ALERT_WEBHOOK_URL") or None,
        alert_smtp={key: env.get(f"MLOPS_ALERT_SMTP_{key.upper()}", "") for key in ("smarthost", "from", "to", "username")},
        alert_timings=env.get("MLOPS_ALERT_TIMINGS") or "",
        scrape_interval=_scrape_interval(env.get("MLOPS_SCRAPE_INTERVAL") or "15s"),
        drift_cooldown_minutes=_number(env, "MLOPS_DRIFT_COOLDOWN_MINUTES", 60.0),
        image_registry=env.get("MLOPS_IMAGE_REGISTRY") or None,
        ssh_private_key=env.get("MLOPS_SSH_PRIVATE_KEY") or None,
        run_lock_timeout_s=_number(env, "MLOPS_RUN_LOCK_TIMEOUT", 1800.0),
        local_ports=local_ports,
        api_timeouts=_api_timeouts(env.get("MLOPS_API_TIMEOUTS") or ""),
        api_key_file=_api_key_file(env.get("MLOPS_API_KEY_FILE") or ""),
        api_keys=tuple(k.strip() for k in (env.get("MLOPS_API_KEYS") or "").split(",") if k.strip()),
        api_access_log=_flag(env, "MLOPS_API_ACCESS_LOG", False),
        api_autoscaling=_api_autoscaling(env.get("MLOPS_API_AUTOSCALING") or ""),
        dagster_postgres_url=_postgres_url(env, "MLOPS_DAGSTER_POSTGRES_URL"),
    )


def _api_autoscaling(raw: str) -> tuple:
    """Only the named values ((name, number), ...): the others stay the api role's defaults."""
    from mlops_assets.serving.container import AUTOSCALING, parse_named_numbers

    if not raw.strip():
        return ()
    try:
        values = parse_named_numbers("MLOPS_API_AUTOSCALING", raw, AUTOSCALING, "min=1,max=4,target=2")
    except SystemExit as exc:
        raise SettingsError(str(exc)) from None
    named = {part.partition("=")[0].strip() for part in raw.split(",") if part.strip()}
    if (values["min"] < 1 or values["target"] < 1 or values["per_node"] < 1
            or ({"min", "max"} <= named and values["min"] > values["max"])):
        raise SettingsError(f"MLOPS_API_AUTOSCALING={raw!r}: need 1 <= min <= max, target >= 1 and per_node >= 1")
    return tuple((name, values[name]) for name in AUTOSCALING if name in named)


def _api_timeouts(raw: str) -> dict:
    from mlops_assets.serving.runtime import parse_api_timeouts

    try:
        return parse_api_timeouts(raw)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


# A registered model's name becomes a folder name (the downloaded versions, image tags): letters,
# digits, '.', '_' and '-', starting with a letter or digit.
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"


def _model_name(raw: str) -> str:
    import re

    if not re.fullmatch(MODEL_NAME_PATTERN, raw) or ".." in raw:
        raise SettingsError(
            f"MLOPS_MODEL_NAME={raw!r} is not a usable model name: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, at most 128 characters, no '..'), e.g. mlops-assets-classifier"
        )
    return raw


def _api_key_file(raw: str) -> Path | None:
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise SettingsError(f"MLOPS_API_KEY_FILE={raw!r} is not a file; point it at a file of API keys, one a line")
    return path.resolve()


def _scrape_interval(raw: str) -> str:
    from mlops_assets.monitoring.promql import seconds_of

    try:
        seconds = seconds_of(raw)
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= 300:
        raise SettingsError(f"MLOPS_SCRAPE_INTERVAL={raw!r} is not a Prometheus duration from 1s to 5m; "
                            "set it like 15s (the default), 5s or 1m")
    return raw.strip()


def _local_ports(raw: str) -> dict:
    """MLOPS_LOCAL_PORTS="api=18000,metrics=18080,replicas=33000-33099,...": LOCAL_PORTS with
    the named ones moved."""
    ports = dict(LOCAL_PORTS)
    example = "api=18000,metrics=18080,replicas=33000-33099"
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in LOCAL_PORTS:
            raise SettingsError(
                f"MLOPS_LOCAL_PORTS names {name!r}; use any of {', '.join(LOCAL_PORTS)} (e.g. {example})"
            )
        try:
            if name == "replicas":
                low, high = (int(v) for v in value.split("-"))
                if not 1024 <= low < high or high + 1 + (high - low) > 65535:  # gRPC ports follow
                    raise ValueError
                ports[name] = (low, high)
            else:
                ports[name] = int(value)
                if not 1 <= ports[name] <= 65535:
                    raise ValueError
        except ValueError:
            form = "LOW-HIGH" if name == "replicas" else "a port number"
            raise SettingsError(f"MLOPS_LOCAL_PORTS: {item!r} is not {name}={form} (e.g. {example})") from None
    return ports


POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg2://")
# dagster-postgres 0.29's SQL works through psycopg2 only, and SQLAlchemy 2.1 drives a plain
# postgresql:// URL with psycopg 3 (measured: a syntax error at the first event written), so the
# instance gets the URL with the driver named.
DAGSTER_POSTGRES_SCHEME = "postgresql+psycopg2://"


def _postgres_url(env, name: str) -> str | None:
    """MLOPS_DAGSTER_POSTGRES_URL as dagster-postgres can use it (psycopg2 named), or None."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.startswith(POSTGRES_SCHEMES):
        shown = raw.split("://", 1)[0] + "://..." if "://" in raw else "a value without a scheme"
        raise SettingsError(
            f"{name} is {shown}, not a PostgreSQL URL; set it like postgresql://USER@/DATABASE?host=/var/run/postgresql "
            "(a Unix socket, no password) or postgresql://USER@HOST:5432/DATABASE (the password in ~/.pgpass), "
            "or unset it for the embedded sqlite storage"
        )
    return DAGSTER_POSTGRES_SCHEME + raw.split("://", 1)[1]


def _flag(env, name: str, default: bool) -> bool:
    from mlops_assets.serving.runtime import parse_flag

    try:
        return parse_flag(env.get(name), default, name)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _number(env, name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number; set it to a number like {default}") from None


def _default_ui_url(tracking_uri: str) -> str:
    # A tracking server is its own UI; a sqlite store is shown by `make mlflow-ui`.
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    return "http://127.0.0.1:5000"
