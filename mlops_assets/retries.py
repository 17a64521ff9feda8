"""Retry policy of the steps that call external tools (image builds, OpenTofu, Ansible,
registries): transient failures are retried with exponential backoff and jitter; failures
that retrying cannot fix are raised with `permanent()` and fail at once."""

import dagster as dg

# 3 attempts in all, ~10 s then ~20 s apart: enough for a busy engine, a throttled cloud
# API or an SSH connection refused while a host boots, short enough to fail within a minute.
EXTERNAL_STEP_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def root_reason(exc: BaseException) -> str:
    """The first line of what the innermost cause says (a database driver's own words under
    SQLAlchemy's and Dagster's wrappers), else the exception's type."""
    root = exc
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    return (str(root).strip().splitlines() or [type(root).__name__])[0]


def permanent(description: str, metadata: dict | None = None) -> dg.Failure:
    """A failure no retry can fix (bad configuration, a broken Dockerfile, a refused plan)."""
    return dg.Failure(description=description, metadata=metadata, allow_retries=False)
