"""Grafana file provisioning: a Prometheus datasource and a dashboard provider.

Grafana reads these from its `provisioning/datasources/` and `provisioning/dashboards/`
folders; the dashboards' JSON goes to `dashboards_path` (the Ansible `grafana` role copies
`grafana_dashboards/dashboards/` there).
"""

from __future__ import annotations

from .yaml_text import dump

DATASOURCE_UID = "mlops-prometheus"
DATASOURCE_NAME = "Prometheus (mlops-assets)"
DEFAULT_DASHBOARDS_PATH = "/var/lib/grafana/dashboards/mlops-assets"


def datasource_yaml(prometheus_url: str, uid: str = DATASOURCE_UID, name: str = DATASOURCE_NAME) -> str:
    document = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": name,
                "uid": uid,
                "type": "prometheus",
                "access": "proxy",
                "url": prometheus_url,
                "isDefault": True,
                "editable": False,
                "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
            }
        ],
    }
    return dump(document)


def dashboards_provider_yaml(dashboards_path: str = DEFAULT_DASHBOARDS_PATH, folder: str = "mlops-assets") -> str:
    document = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "mlops-assets",
                "orgId": 1,
                "folder": folder,
                "type": "file",
                "disableDeletion": True,
                # The files are generated: edits made in the UI would be lost at the next render.
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": dashboards_path, "foldersFromFilesStructure": False},
            }
        ],
    }
    return dump(document)

