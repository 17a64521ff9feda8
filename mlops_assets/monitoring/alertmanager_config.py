"""The Alertmanager configuration: alerts routed by their `severity` label to the receivers that
configuration names (a webhook, optionally e-mail over SMTP), each severity with its own timing.

    critical  short group_wait, repeated hourly while it fires
    warning   longer group_wait, repeated twice a day

Both severities notify the same receivers (`send_resolved`: the resolved notice is delivered
too); with no receiver configured every alert goes to the `null` receiver: Alertmanager still
runs and shows the alerts in its UI and API, it just delivers nothing (`describe()` says so).

Secrets never go into this file's text: the SMTP password is read by Alertmanager from
`password_file` (a path as the Alertmanager process sees it, written by whoever runs it). The
webhook URL is in the file (Alertmanager 0.25 has no `url_file`): the `dashboards` asset's render
under MLOPS_HOME is written with mode 0600; the committed render has no receiver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

from .yaml_text import dump

SEVERITIES = ("critical", "warning")
NULL_RECEIVER = "null"
# Per severity: how long to wait for more alerts of a group before the first notice, between
# notices of a group that changed, and before repeating one that still fires.
DEFAULT_TIMINGS = {
    "critical": {"group_wait": "30s", "group_interval": "5m", "repeat_interval": "1h"},
    "warning": {"group_wait": "2m", "group_interval": "10m", "repeat_interval": "12h"},
}
_DURATION = re.compile(r"^(?:\d+[smhd])+$")


@dataclass(frozen=True)
class Smtp:
    """E-mail delivery: all of smarthost (host:port), sender and recipient, or none."""

    smarthost: str
    sender: str
    to: str
    username: str = ""
    password_file: str = ""  # as the Alertmanager process sees it; empty: no SMTP auth


@dataclass(frozen=True)
class AlertRouting:
    webhook_url: str | None = None
    smtp: Smtp | None = None
    timings: dict = field(default_factory=lambda: {s: dict(t) for s, t in DEFAULT_TIMINGS.items()}, hash=False)

    @property
    def has_receiver(self) -> bool:
        return bool(self.webhook_url or self.smtp)


def check_webhook_url(url: str, setting: str = "MLOPS_ALERT_WEBHOOK_URL") -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{setting}={url!r} is not an http(s) URL: set it to the URL of the webhook receiver "
                         "that takes Alertmanager's POSTs (e.g. http://alerts.internal:9000/hook), or unset it")
    return url


def check_smtp(smarthost: str, sender: str, to: str) -> None:
    given = {"MLOPS_ALERT_SMTP_SMARTHOST": smarthost, "MLOPS_ALERT_SMTP_FROM": sender, "MLOPS_ALERT_SMTP_TO": to}
    missing = [name for name, value in given.items() if not value]
    if missing and len(missing) < len(given):
        raise ValueError(f"e-mail alerts need all of {', '.join(given)}; {', '.join(missing)} not set "
                         "(or unset them all to deliver no e-mail)")
    if smarthost and not re.fullmatch(r"[^\s:]+:\d{1,5}", smarthost):
        raise ValueError(f"MLOPS_ALERT_SMTP_SMARTHOST={smarthost!r} is not host:port (e.g. smtp.example.org:587)")


TARGET_DOWN_FOR = "2m"  # the default `for` of MlopsApiTargetDown (rules.AlertSettings)


def parse_timings(raw: str, setting: str = "MLOPS_ALERT_TIMINGS") -> tuple[dict, str]:
    """"group_wait=5s,critical.repeat_interval=30m,target_down_for=20s": DEFAULT_TIMINGS with
    the named ones moved (a name without a severity applies to both), and the `for` of the
    target-down alert. Returns (timings per severity, target_down_for)."""
    timings = {s: dict(t) for s, t in DEFAULT_TIMINGS.items()}
    target_down_for = TARGET_DOWN_FOR
    example = "group_wait=10s,critical.repeat_interval=30m,target_down_for=1m"
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, _, value = item.partition("=")
        severity, _, name = key.strip().rpartition(".")
        severities = [severity] if severity else list(SEVERITIES)
        known = name in DEFAULT_TIMINGS["critical"] or (name == "target_down_for" and not severity)
        if any(s not in timings for s in severities) or not known:
            names = ", ".join(DEFAULT_TIMINGS["critical"])
            raise ValueError(f"{setting}: {item!r} names no timing; use [critical.|warning.]{{{names}}}=DURATION "
                             f"or target_down_for=DURATION (e.g. {example})")
        if not _DURATION.match(value.strip()):
            raise ValueError(f"{setting}: {item!r} is not a duration like 30s, 5m or 1h (e.g. {example})")
        if name == "target_down_for":
            target_down_for = value.strip()
            continue
        for s in severities:
            timings[s][name] = value.strip()
    return timings, target_down_for


def _receiver(name: str, routing: AlertRouting) -> dict:
    receiver: dict = {"name": name}
    if routing.webhook_url:
        receiver["webhook_configs"] = [{"url": routing.webhook_url, "send_resolved": True}]
    if routing.smtp:
        smtp = routing.smtp
        email = {"to": smtp.to, "from": smtp.sender, "smarthost": smtp.smarthost, "send_resolved": True}
        if smtp.username:
            email["auth_username"] = smtp.username
        if smtp.password_file:
            email["auth_password_file"] = smtp.password_file
        receiver["email_configs"] = [email]
    return receiver


def alertmanager_config(routing: AlertRouting = AlertRouting()) -> str:
    """alertmanager.yml: a route per severity to its receiver, or everything to `null`."""
    routes, receivers = [], [{"name": NULL_RECEIVER}]
    for severity in SEVERITIES:
        name = f"mlops-{severity}" if routing.has_receiver else NULL_RECEIVER
        routes.append({"matchers": [f'severity="{severity}"'], "receiver": name, **routing.timings[severity]})
        if routing.has_receiver:
            receivers.append(_receiver(name, routing))
    document = {
        "route": {
            # Anything without a known severity: nowhere, but still listed in Alertmanager.
            "receiver": NULL_RECEIVER,
            "group_by": ["alertname", "job"],
            **routing.timings["warning"],
            "routes": routes,
        },
        # A critical alert silences the warnings of the same alert name and job meanwhile.
        "inhibit_rules": [{"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
                           "equal": ["alertname", "job"]}],
        "receivers": receivers,
    }
    return dump(document)


def describe(routing: AlertRouting) -> str:
    """What the configuration delivers, for metadata and logs (no secret, no webhook path)."""
    if not routing.has_receiver:
        return ("no receiver configured: alerts are listed in Alertmanager but delivered nowhere "
                "(set MLOPS_ALERT_WEBHOOK_URL and/or MLOPS_ALERT_SMTP_*)")
    parts = []
    if routing.webhook_url:
        parsed = urlparse(routing.webhook_url)
        parts.append(f"webhook at {parsed.scheme}://{parsed.netloc.rpartition('@')[2]}")
    if routing.smtp:
        parts.append(f"e-mail to {routing.smtp.to} via {routing.smtp.smarthost}")
    return " and ".join(parts) + " (critical and warning, resolved notices too)"
