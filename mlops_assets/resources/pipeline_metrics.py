"""Where the pipeline's metrics go: the Pushgateway of the target (monitoring/pipeline_metrics.py
builds and pushes them; the hook in mlops_assets/pipeline_metrics.py calls `push` after every
materialization). One class per kind of target, chosen in targets.py:

- `LocalPipelineMetrics` (`local`): the Pushgateway that the local Prometheus resource runs on
  loopback (resources/prometheus.py). Pushes only while that gateway of this MLOPS_HOME runs
  (`cli run` starts it first), so a test's state folder never pushes into `make run`'s gateway.
- `PipelineMetrics` (`sim`, `aws`): the gateway at `gateway_url` (MLOPS_PUSHGATEWAY_URL), else
  the monitoring host's, which the `pushgateway` role runs and `deployed_hosts` records
  (`gateway_record`), with its basic auth (the password from MLOPS_PUSHGATEWAY_PASSWORD, else
  the rehearsal's generated one). Before the first `deployed_hosts` of a state folder there is
  no gateway: pushing is off and each materialization says so in one log line.

A push that fails is a warning in the step's log; it never fails the asset.
"""

from __future__ import annotations

import dagster as dg

from mlops_assets.monitoring import pipeline_metrics
from mlops_assets.resources.prometheus import LocalPrometheus
from mlops_assets.resources.prometheus_api import read_password
from mlops_assets.state import StateFile

# The monitoring host's Pushgateway password: the Ansible secret extra var the pushgateway and
# prometheus roles read, and the environment variable it comes from.
PUSHGATEWAY_SECRET = "pushgateway_web_password"
PUSHGATEWAY_PASSWORD_ENV = "MLOPS_PUSHGATEWAY_PASSWORD"


class PipelineMetrics(dg.ConfigurableResource):
    """Pushes each materialization's metrics to `gateway_url`, else to the recorded gateway of
    the monitoring host (none: off)."""

    target: str  # the `target` grouping label (MLOPS_TARGET)
    gateway_url: str | None = None
    # state.RECORDS["pushgateway"], written by deployed_hosts: the monitoring host's gateway.
    gateway_record: str | None = None
    # Basic auth of the gateway. The password is never part of the config: read at push time
    # from the environment variable `password_env`, else from `password_file` (the rehearsal's).
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    retraining_period_s: float = 86400.0  # the retraining schedule's period (MLOPS_RETRAIN_CRON)
    timeout_s: float = 5.0

    def gateway(self, log) -> str | None:
        """The gateway to push to now, or None (then it says why in `log`)."""
        if self.gateway_url:
            return self.gateway_url
        recorded = StateFile(self.gateway_record).read() if self.gateway_record else None
        if recorded:
            return recorded["url"]
        log.info(f"pipeline metrics: no Pushgateway for the {self.target} target yet (deployed_hosts puts one on the "
                 "monitoring host; or set MLOPS_PUSHGATEWAY_URL); not pushed")
        return None

    def auth(self) -> pipeline_metrics.Auth | None:
        """(user, password) when the gateway asks for basic auth and a password is known. Without
        the password the push is refused with 401: a warning, as for any failed push."""
        password = read_password(self.password_env, self.password_file) if self.username else None
        return (self.username, password) if self.username and password else None

    def push(self, run: pipeline_metrics.Materialization, log) -> pipeline_metrics.PushResult | None:
        gateway = self.gateway(log)
        if gateway is None:
            return None
        result = pipeline_metrics.push(gateway, run, log.warning, self.timeout_s, self.auth())
        if result.pushed:
            log.debug(result.message)
        return result


class LocalPipelineMetrics(PipelineMetrics):
    """`local`: the Pushgateway of the local Prometheus resource, on loopback."""

    prometheus: LocalPrometheus

    def gateway(self, log) -> str | None:
        if self.prometheus.pushgateway_url is None:
            log.info("pipeline metrics: the local Prometheus runs no Pushgateway (pushgateway=False); not pushed")
            return None
        if self.prometheus.pushgateway_pid() is None:
            log.warning(f"pipeline metrics not pushed: the Pushgateway of {self.prometheus.state_dir} is not running "
                        f"on {self.prometheus.pushgateway_target} (`make run` starts it; the asset is not affected)")
            return None
        return self.prometheus.pushgateway_url
