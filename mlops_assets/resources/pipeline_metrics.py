"""Where the pipeline's metrics go: the Pushgateway of the target (monitoring/pipeline_metrics.py
builds and pushes them; the hook in mlops_assets/pipeline_metrics.py calls `push` after every
materialization). One class per kind of target, chosen in targets.py:

- `LocalPipelineMetrics` (`local`): the Pushgateway that the local Prometheus resource runs on
  loopback (resources/prometheus.py). Pushes only while that gateway of this MLOPS_HOME runs
  (`cli run` starts it first), so a test's state folder never pushes into `make run`'s gateway.
- `PipelineMetrics` (`sim`, `aws`): the gateway at `gateway_url` (MLOPS_PUSHGATEWAY_URL); with
  none configured, pushing is off and each materialization says so in one log line. (No role
  installs a Pushgateway on the monitoring host yet.)

A push that fails is a warning in the step's log; it never fails the asset.
"""

from __future__ import annotations

import dagster as dg

from mlops_assets.monitoring import pipeline_metrics
from mlops_assets.resources.prometheus import LocalPrometheus


class PipelineMetrics(dg.ConfigurableResource):
    """Pushes each materialization's metrics to `gateway_url` (none: off)."""

    target: str  # the `target` grouping label (MLOPS_TARGET)
    gateway_url: str | None = None
    retraining_period_s: float = 86400.0  # the retraining schedule's period (MLOPS_RETRAIN_CRON)
    timeout_s: float = 5.0

    def gateway(self, log) -> str | None:
        """The gateway to push to now, or None (then it says why in `log`)."""
        if not self.gateway_url:
            log.info(f"pipeline metrics: no Pushgateway for the {self.target} target (set MLOPS_PUSHGATEWAY_URL); not pushed")
        return self.gateway_url

    def push(self, run: pipeline_metrics.Materialization, log) -> pipeline_metrics.PushResult | None:
        gateway = self.gateway(log)
        if gateway is None:
            return None
        result = pipeline_metrics.push(gateway, run, log.warning, self.timeout_s)
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
