"""External steps retry transient failures with backoff; permanent ones fail at once."""

import dagster as dg
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.retries import EXTERNAL_STEP_RETRY, permanent

pytestmark = pytest.mark.unit

EXTERNAL_STEPS = ["container_image", "tofu_state", "deployed_hosts", "deployed_api"]


@pytest.mark.parametrize("key", EXTERNAL_STEPS)
def test_external_steps_have_the_retry_policy(key):
    policy = build_definitions().resolve_asset_graph().get(dg.AssetKey(key)).assets_def.op.retry_policy
    assert policy == EXTERNAL_STEP_RETRY
    assert policy.max_retries >= 1 and policy.backoff == dg.Backoff.EXPONENTIAL


def test_transient_failures_are_retried_and_permanent_ones_are_not():
    attempts = {"transient": 0, "permanent": 0}
    fast = dg.RetryPolicy(max_retries=EXTERNAL_STEP_RETRY.max_retries, delay=0.01, backoff=dg.Backoff.EXPONENTIAL)

    @dg.asset(retry_policy=fast)
    def flaky_engine():
        attempts["transient"] += 1
        if attempts["transient"] == 1:
            raise dg.Failure("engine busy")
        return 1

    @dg.asset(retry_policy=fast)
    def broken_dockerfile():
        attempts["permanent"] += 1
        raise permanent("Dockerfile: unknown instruction")

    result = dg.materialize([flaky_engine, broken_dockerfile], raise_on_error=False)
    assert attempts == {"transient": 2, "permanent": 1}
    assert not result.success
