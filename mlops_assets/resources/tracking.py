"""The MLflow tracking store the pipeline trains into, made ready by the `tracking_server` asset
before `candidate_models` opens it.

One class per kind of target, chosen in targets.py (resource key `tracking_store`):

- `ConfiguredStore` (`local`, and any target whose MLFLOW_TRACKING_URI is set): the store that
  variable names (default: the sqlite file under MLOPS_HOME; or a PostgreSQL database; or a
  team's existing tracking server), reached once. Nothing is deployed.
- `ServerOnMonitoringHost` (`sim`, `aws`): `mlflow server` on the monitoring host, on
  PostgreSQL beside it, artifacts proxied into the infrastructure's bucket, basic auth on
  (ansible_roles/site.yml, tag `tracking`: the docker and tracking_server roles). Its URL and
  the user the pipeline logs in as are recorded (state.RECORDS["tracking_server"]); the
  `mlflow` resource reads that record at run time, so every later asset trains, registers and
  fetches through the server.

The asset's data version is the store's address (never a password): pointing the pipeline at
another store makes the training stale, so the next run trains into the new store instead of
assuming the old store's runs are there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from mlops_assets.resources.ansible import Ansible, AnsibleError, inventory_hosts
from mlops_assets.resources.container_engine import ContainerEngine
from mlops_assets.resources.hosts import group_var
from mlops_assets.resources.mlflow_registry import MlflowRegistry, shown_uri, store_kind
from mlops_assets.state import StateFile, generated_secret
from mlops_assets.versioning import stable_hash

# The MLflow user the pipeline logs in as (the role's admin), and where its password and the
# database's come from: these variables, else a generated, git-ignored file under secrets_dir.
TRACKING_USERNAME = "admin"
TRACKING_PASSWORD_ENV = "MLOPS_TRACKING_PASSWORD"
TRACKING_DB_PASSWORD_ENV = "MLOPS_TRACKING_DB_PASSWORD"


@dataclass(frozen=True)
class TrackingStore:
    """The `tracking_server` asset's value: where runs, models and artifacts go."""

    kind: str  # "sqlite" | "database" | "server"
    address: str  # the URI without any password
    ui_url: str
    deployed_by: str  # "nothing" (configured) or what started it


@dataclass(frozen=True)
class TrackingResult:
    store: TrackingStore
    data_version: str
    metadata: dict[str, Any]


class TrackingServer(dg.ConfigurableResource):
    """Makes the tracking store ready (see the module docstring)."""

    def ensure(self, inventory: dict, *, log) -> TrackingResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def deployed_on(self) -> str | None:
        """The target whose hosts run the server this resource deploys; None: it deploys none."""
        return None

    def backup(self, inventory: dict, *, keep: int, log) -> dict[str, Any]:
        raise dg.Failure(description=(
            "backups (tracking_backup) are of the tracking server this project deploys in sim and aws; this store is "
            "MLFLOW_TRACKING_URI's (or the local sqlite file): back it up with its own tools (pg_dump, a file copy)"))

    def restore(self, inventory: dict, *, key: str, log) -> dict[str, Any]:
        raise dg.Failure(description=(
            "restores (tracking_restore) are of the tracking server this project deploys in sim and aws; this store is "
            "MLFLOW_TRACKING_URI's (or the local sqlite file): restore it with its own tools"))


class ConfiguredStore(TrackingServer):
    """The store MLFLOW_TRACKING_URI names (default sqlite under MLOPS_HOME): reached, not deployed."""

    mlflow: MlflowRegistry

    def ensure(self, inventory: dict, *, log) -> TrackingResult:
        address = shown_uri(self.mlflow.tracking_uri)
        kind = store_kind(self.mlflow.tracking_uri)
        # A server or database that does not answer fails here, naming the setting; a sqlite
        # store is created (and migrated) by this first call.
        self.mlflow.client().search_experiments(max_results=1)
        store = TrackingStore(kind=kind, address=address, ui_url=self.mlflow.ui_url, deployed_by="nothing")
        log.info(f"MLflow store ({kind}): {address}")
        return TrackingResult(store, stable_hash({"kind": kind, "address": address}), {
            "store": address, "kind": kind, "mlflow_ui": dg.MetadataValue.url(self.mlflow.ui_url),
            "deployed_by": "nothing (MLFLOW_TRACKING_URI, else the sqlite file under MLOPS_HOME)",
        })


class ServerOnMonitoringHost(TrackingServer):
    """`sim`, `aws`: the tracking server on the monitoring host (see the module docstring).

    Each run: the two images (the server from the project's pinned wheels, PostgreSQL from
    Debian's package) built when their tags are absent and saved as archives for the host; the
    `tracking` plays of site.yml (idempotent: a second run changes nothing and the image role
    copies an archive only for a tag the host lacks); the server reached from here with the
    pipeline's credentials; the record written."""

    ansible: Ansible
    mlflow: MlflowRegistry
    container_engine: ContainerEngine
    record_file: str = Field(description="Where the deployed server is recorded (state.RECORDS['tracking_server']).")
    images_dir: str | None = Field(default=None, description="Where the images' archives are saved for the host's "
                                   "Docker (default: the shared cache, where the rehearsal keeps its 1.5 GB once).")
    secrets_dir: str = Field(description="Where the generated passwords are kept (0600, git-ignored) when "
                                         f"{TRACKING_PASSWORD_ENV} / {TRACKING_DB_PASSWORD_ENV} are unset.")
    emulator_dir: str | None = Field(default=None, description="sim: the EC2 emulator's folder; its S3 "
                                     "(moto), exposed on the test bridge, stands in for the bucket.")

    def deployed_on(self) -> str | None:
        return self.ansible.target

    def password_file(self) -> Path:
        return Path(self.secrets_dir) / "tracking_server_admin_password"

    def _password(self, env_name: str, secret_name: str) -> str:
        return os.environ.get(env_name) or generated_secret(Path(self.secrets_dir), secret_name)

    def role_vars(self, inventory: dict, *, log) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the tracking_server role's variables for this inventory, the monitoring host's vars):
        the bucket from tofu_state's inventory, S3 access (the instance profile in aws; the
        emulator's S3 on the test bridge in sim), the images' archives."""
        monitoring = _monitoring_host(inventory)
        bucket = group_var(inventory, "monitoring", "mlflow_artifact_bucket", None)
        if not bucket:
            raise dg.Failure(description=(
                "tofu_state's inventory has no mlflow_artifact_bucket for the monitoring host: the infrastructure "
                "predates the artifact bucket. Materialize tofu_state again (OpenTofu adds the bucket)"))
        port = int(group_var(inventory, "monitoring", "tracking_port", 5000))
        variables: dict[str, Any] = {
            "tracking_server_s3_bucket": bucket,
            "tracking_server_port": port,
            # MLflow answers only the Host headers it allows: the address this machine uses, and
            # loopback for the role's own health check on the host.
            "tracking_server_allowed_hosts": ",".join(f"{host}:{port}" for host in (monitoring["ansible_host"], "127.0.0.1", "localhost")),
        }
        with self.container_engine.connected() as engine:
            from mlops_assets.image.tracking_server import build_postgres_image, build_tracking_server_image
            from mlops_assets.rehearsal.images import save_archive

            for prefix, build in (("tracking_server", build_tracking_server_image),
                                  ("tracking_server_postgres", build_postgres_image)):
                image = build(engine, log=log)
                repository, tag = image.reference.rsplit(":", 1)
                archive = save_archive(engine, image.reference, Path(self.images_dir) if self.images_dir else None)
                log.info(f"{prefix.replace('_', ' ')} image {image.reference}"
                         f"{' built' if image.built else ''}, archive {archive.name}")
                variables.update({f"{prefix}_image_source": "archive", f"{prefix}_image_repository": repository,
                                  f"{prefix}_image_tag": tag, f"{prefix}_image_archive": str(archive)})
        if self.emulator_dir:
            variables.update(self._emulated_s3(inventory, log))
        return variables, monitoring

    def _emulated_s3(self, inventory: dict, log) -> dict[str, Any]:
        """sim: the emulator's S3 where the monitoring host reaches this machine (the test
        bridge), with the emulator's static credentials, as an S3 stand-in's settings."""
        from mlops_assets.rehearsal.emulator import _CREDENTIALS, Ec2Emulator
        from mlops_assets.state import RECORDS

        known = RECORDS["emulator"].in_folder(Path(self.emulator_dir)).read()
        if not known:
            raise dg.Failure(description=f"sim: no EC2 emulator recorded in {self.emulator_dir}: materialize tofu_state first")
        hosts = self.ansible.ensure_hosts(inventory, log.info)
        emulator = Ec2Emulator(**known)
        endpoint = emulator.expose(Path(self.emulator_dir), hosts.bridge_address)
        log.info(f"sim: the emulator's S3 at {endpoint} for the monitoring host")
        return {"tracking_server_s3_endpoint_url": endpoint, "tracking_server_s3_region": emulator.region,
                "tracking_server_s3_access_key_id": _CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "tracking_server_s3_secret_access_key": _CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}

    def ensure(self, inventory: dict, *, log) -> TrackingResult:
        variables, monitoring = self.role_vars(inventory, log=log)
        variables["tracking_server_admin_username"] = TRACKING_USERNAME
        variables["tracking_server_admin_password"] = self._password(TRACKING_PASSWORD_ENV, "tracking_server_admin_password")
        variables["tracking_server_postgres_password"] = self._password(TRACKING_DB_PASSWORD_ENV,
                                                                        "tracking_server_postgres_password")
        try:
            result = self.ansible.run_playbook(inventory, tags=["tracking"], limit="monitoring",
                                               extra_vars=variables, log=log.info)
        except AnsibleError as exc:
            raise dg.Failure(description=f"the tracking server on the monitoring host was not deployed: {exc}") from None
        url = f"http://{monitoring['ansible_host']}:{variables['tracking_server_port']}"
        record = {"url": url, "username": TRACKING_USERNAME, "password_env": TRACKING_PASSWORD_ENV,
                  "password_file": str(self.password_file()), "bucket": variables["tracking_server_s3_bucket"],
                  "images": {key.removesuffix("_image_tag"): value for key, value in variables.items()
                             if key.endswith("_image_tag")}}
        StateFile(self.record_file).write(record)
        # From here on the mlflow resource is this server: reached with the pipeline's credentials.
        self.mlflow.client().search_experiments(max_results=1)
        store = TrackingStore(kind="server", address=url, ui_url=url,
                              deployed_by=f"ansible site.yml --tags tracking on {monitoring['name']}")
        log.info(f"MLflow tracking server on {monitoring['name']}: {url} (artifacts in s3://{record['bucket']})")
        return TrackingResult(store, stable_hash({"kind": "server", "address": url}), {
            "store": url, "kind": "server", "mlflow_ui": dg.MetadataValue.url(url),
            "artifact_store": f"s3://{record['bucket']}/mlflow-artifacts",
            "images": dg.MetadataValue.json(record["images"]), "user": TRACKING_USERNAME,
            "password": f"{TRACKING_PASSWORD_ENV}, else {self.password_file()}",
            "ansible_changed": result.changed, "ansible_seconds": result.seconds,
            "deployed_by": store.deployed_by,
        })


    def backup(self, inventory: dict, *, keep: int, log) -> dict[str, Any]:
        """pg_dump of the tracking and auth databases into the artifact bucket (under `backups/`,
        UTC-timestamped), keeping the newest `keep` (ansible_roles/tracking_backup.yml)."""
        result = self._run_maintenance(inventory, "tracking_backup.yml", {"tracking_server_backup_keep": keep}, log)
        key = result.stats_data.get("tracking_server_backup_key")
        if not key:
            raise dg.Failure(description="tracking_backup.yml succeeded but reported no backup key (set_stats)")
        log.info(f"tracking server backup: {key} (the newest {keep} kept)")
        return {"key": key, "keep": keep, "seconds": result.seconds}

    def restore(self, inventory: dict, *, key: str, log) -> dict[str, Any]:
        """The databases brought back from backup `key` (empty: the newest), the server
        restarted on them and reached again (ansible_roles/tracking_restore.yml)."""
        result = self._run_maintenance(inventory, "tracking_restore.yml", {"tracking_server_restore_key": key}, log)
        champion = self.mlflow.champion(self.mlflow.model_name)
        log.info(f"tracking server restored from {key or 'the newest backup'}; champion "
                 f"{champion.version if champion else 'none'} of {self.mlflow.model_name}")
        return {"key": key or "newest", "champion": champion.version if champion else None, "seconds": result.seconds}

    def _run_maintenance(self, inventory: dict, playbook: str, variables: dict[str, Any], log):
        monitoring = _monitoring_host(inventory)
        if not StateFile(self.record_file).read():
            raise dg.Failure(description=(
                f"no tracking server is recorded in {self.record_file}: materialize tracking_server first (make run)"))
        try:
            return self.ansible.run_playbook(inventory, playbook, limit=monitoring["name"], extra_vars=variables,
                                             log=log.info)
        except AnsibleError as exc:
            raise dg.Failure(description=f"{playbook} failed on {monitoring['name']}: {exc}") from None


def _monitoring_host(inventory: dict) -> dict[str, Any]:
    """The monitoring group's (first) host of tofu_state's inventory: its own vars and its name
    (the group's vars: resources/hosts.py's group_var)."""
    group = ((inventory.get("all") or {}).get("children") or {}).get("monitoring") or {}
    names = sorted((group.get("hosts") or {}))
    if not names:
        raise dg.Failure(description="tofu_state's inventory has no monitoring host: materialize tofu_state first")
    return {**inventory_hosts(inventory)[names[0]], "name": names[0]}
