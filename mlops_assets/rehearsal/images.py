"""Images the Ansible role tests load from archives, built locally from the offline Debian base
(no registry is reachable offline):

- a stand-in API: a few lines of Python's http.server answering the real API's routes with the
  same shapes (/readyz with the model version from MLOPS_MODEL_VERSION, /predict, /metrics on
  the metrics port); `broken=True` makes one whose /readyz never becomes ready (rollback tests);
- Prometheus from Debian's `prometheus` package, with prom/prometheus's layout (entrypoint the
  binary, user nobody, data in /prometheus), so the `prometheus` role runs it exactly as it
  would run the official image, through the same variables;
- Alertmanager from Debian's `prometheus-alertmanager` package, laid out like prom/alertmanager
  (entrypoint the binary, user nobody, data in /alertmanager), for the `alertmanager` role;
- node_exporter and the Pushgateway from Debian's `prometheus-node-exporter` and
  `prometheus-pushgateway`, laid out like prom/node-exporter and prom/pushgateway (entrypoint
  the binary, user nobody) for the `node_exporter` and `pushgateway` roles;
- Redis from Debian's `redis-server`, laid out like the official `redis` image (the command
  `redis-server`, user redis (999), data in /data), for the `ray_gcs_store` role.

Images are built once per engine (the tag is a hash of the build context) and saved as
archives under the cache folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from mlops_assets.offline_base import BASE_IMAGE, default_cache_dir, ensure_base_image

TEST_API_REPOSITORY = "localhost/mlops-test-api"
PROMETHEUS_REPOSITORY = "localhost/mlops-prometheus"
ALERTMANAGER_REPOSITORY = "localhost/mlops-alertmanager"
NODE_EXPORTER_REPOSITORY = "localhost/mlops-node-exporter"
PUSHGATEWAY_REPOSITORY = "localhost/mlops-pushgateway"
REDIS_REPOSITORY = "localhost/mlops-redis"

_TEST_API_SERVER = r'''
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

VERSION = os.environ.get("MLOPS_MODEL_VERSION", "0")
BROKEN = os.environ.get("TEST_API_BROKEN") == "1"
COUNT = {"n": 0}

class Api(BaseHTTPRequestHandler):
    def _send(self, status, body, kind="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            return self._send(200, {"status": "alive"})
        if self.path == "/readyz":
            if BROKEN:
                return self._send(503, {"detail": "model not loaded yet"})
            return self._send(200, {"status": "ready", "model": {"name": "test-model", "version": VERSION}})
        return self._send(404, {"detail": "not found"})

    def do_POST(self):
        if self.path != "/predict":
            return self._send(404, {"detail": "not found"})
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        COUNT["n"] += len(body.get("instances", []))
        labels = ["Adelie" for _ in body.get("instances", [])]
        return self._send(200, {"predictions": labels, "model": {"name": "test-model", "version": VERSION}})

    def log_message(self, *args):
        pass

class Metrics(BaseHTTPRequestHandler):
    def do_GET(self):
        text = ("# TYPE ray_mlops_predictions_total counter\n"
                f'ray_mlops_predictions_total{{model_version="{VERSION}"}} {COUNT["n"]}\n')
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

Thread(target=ThreadingHTTPServer(("0.0.0.0", 8080), Metrics).serve_forever, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", 8000), Api).serve_forever()
'''

_TEST_API_DOCKERFILE = """\
FROM {base}
COPY server.py /srv/server.py
ENV TEST_API_BROKEN={broken}
USER nobody
EXPOSE 8000 8080
CMD ["python3", "/srv/server.py"]
"""

# A server from a Debian package laid out like its official prom/ image: the binary as entrypoint,
# user nobody, its data in /{name}, its configuration under /etc/{name}. Like the Go binaries
# below, on an empty root: the binary, libc and the loader, plus the /usr/share folder the
# server reads at run time (`share`, copied with its symlinks resolved): Alertmanager's
# notification templates; Prometheus's web UI, its templates and a handful of Debian's
# JavaScript libraries. moment-timezone's zone data
# (214 MB, unused: the UI loads moment-timezone-with-data.min.js) is left out, so the image is
# a small fraction of the 630 MB of the package installed on the base.
_DEBIAN_SERVER_DOCKERFILE = """\
FROM {base} AS package
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends {package} \\
 && mkdir -p /out/usr/bin /out/usr/share /out/lib/x86_64-linux-gnu /out/lib64 /out/etc/{name} /out/{name} \\
 && chown 65534:65534 /out/{name} \\
 && cp /usr/bin/{package} /out/usr/bin/ \\
 && cp -L /lib/x86_64-linux-gnu/libc.so.6 /out/lib/x86_64-linux-gnu/ \\
 && cp -L /lib64/ld-linux-x86-64.so.2 /out/lib64/ \\
{share_step} && grep -E '^(root|nobody):' /etc/passwd > /out/etc/passwd \\
 && grep -E '^(root|nogroup):' /etc/group > /out/etc/group
FROM scratch
COPY --from=package /out/ /
USER 65534
WORKDIR /{name}
EXPOSE {port}
ENTRYPOINT ["/usr/bin/{package}"]
CMD ["--config.file=/etc/{name}/{name}.yml", "--{storage_flag}=/{name}"]
"""


# Debian's Go programs need nothing but themselves and the C library: the image is the binary,
# libc, the loader and the nobody user on an empty root (about 15 MB to ship to each host, not
# the 200 MB of the base).
_GO_BINARY_DOCKERFILE = """\
FROM {base} AS package
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends {package} \\
 && mkdir -p /out/usr/bin /out/lib/x86_64-linux-gnu /out/lib64 /out/etc \\
 && cp /usr/bin/{package} /out/usr/bin/ \\
 && cp -L /lib/x86_64-linux-gnu/libc.so.6 /out/lib/x86_64-linux-gnu/ \\
 && cp -L /lib64/ld-linux-x86-64.so.2 /out/lib64/ \\
 && grep -E '^(root|nobody):' /etc/passwd > /out/etc/passwd \\
 && grep -E '^(root|nogroup):' /etc/group > /out/etc/group
FROM scratch
COPY --from=package /out/ /
USER 65534
EXPOSE {port}
ENTRYPOINT ["/usr/bin/{package}"]
"""


# Redis needs a few shared libraries beyond libc (OpenSSL, jemalloc, Lua, systemd's notify):
# the image is the server, what `ldd` lists, and the official image's redis user (999) on an
# empty root; like the official image, `redis-server [config file]` is its command.
_REDIS_DOCKERFILE = """\
FROM {base} AS package
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends redis-server \\
 && mkdir -p /out/usr/bin /out/etc /out/data \\
 && cp /usr/bin/redis-server /out/usr/bin/redis-server \\
 && ldd /usr/bin/redis-server | grep -o '/[^ ]*' | xargs -I LIB cp -L --parents LIB /out/ \\
 && chown 999:999 /out/data \\
 && grep -E '^root:' /etc/passwd > /out/etc/passwd \\
 && echo 'redis:x:999:999::/data:/usr/sbin/nologin' >> /out/etc/passwd \\
 && grep -E '^root:' /etc/group > /out/etc/group \\
 && echo 'redis:x:999:' >> /out/etc/group
FROM scratch
COPY --from=package /out/ /
ENV PATH=/usr/bin
USER 999
WORKDIR /data
EXPOSE 6379
CMD ["redis-server"]
"""


def _context(files: dict[str, str]) -> tuple[bytes, str]:
    """A build context tar and the hash of its files."""
    buffer = io.BytesIO()
    digest = hashlib.sha256()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            digest.update(name.encode() + b"\0" + data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), digest.hexdigest()[:12]


def _build(engine, repository: str, files: dict[str, str], tag: str | None = None) -> str:
    context, digest = _context(files)
    reference = f"{repository}:{tag or digest}"
    try:
        engine.images.get(reference)
        return reference
    except Exception:  # docker.errors.ImageNotFound; build below
        pass
    engine.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=reference, rm=True, network_mode="host")
    return reference


def build_test_api_image(engine, *, broken: bool = False, tag: str | None = None) -> str:
    """The stand-in API image; returns repository:tag."""
    ensure_base_image(engine)
    files = {"Dockerfile": _TEST_API_DOCKERFILE.format(base=BASE_IMAGE, broken=int(broken)), "server.py": _TEST_API_SERVER}
    return _build(engine, TEST_API_REPOSITORY, files, tag)


def _debian_server_image(engine, repository: str, *, share: str = "", leave_out: str = "", **layout: str) -> str:
    ensure_base_image(engine)
    step = f" && cp -rL --parents {share} /out/ \\\n" if share else ""
    step += f" && rm -rf /out{leave_out} \\\n" if leave_out else ""
    dockerfile = _DEBIAN_SERVER_DOCKERFILE.format(base=BASE_IMAGE, share_step=step, **layout)
    return _build(engine, repository, {"Dockerfile": dockerfile})  # tagged with the Dockerfile's hash


def build_prometheus_image(engine) -> str:
    """Prometheus from Debian's package, laid out like prom/prometheus; returns repository:tag."""
    return _debian_server_image(engine, PROMETHEUS_REPOSITORY, package="prometheus", name="prometheus", port="9090",
                                storage_flag="storage.tsdb.path", share="/usr/share/prometheus",
                                leave_out="/usr/share/prometheus/web/static/moment-timezone/data")


def build_alertmanager_image(engine) -> str:
    """Alertmanager from Debian's package, laid out like prom/alertmanager; returns repository:tag."""
    return _debian_server_image(engine, ALERTMANAGER_REPOSITORY, package="prometheus-alertmanager", name="alertmanager",
                                port="9093", storage_flag="storage.path",
                                share="/usr/share/prometheus/alertmanager")


def build_node_exporter_image(engine) -> str:
    """node_exporter from Debian's package, laid out like prom/node-exporter; returns repository:tag."""
    return _build_go_binary_image(engine, NODE_EXPORTER_REPOSITORY, "prometheus-node-exporter", 9100)


def build_pushgateway_image(engine) -> str:
    """The Pushgateway from Debian's package, laid out like prom/pushgateway; returns repository:tag."""
    return _build_go_binary_image(engine, PUSHGATEWAY_REPOSITORY, "prometheus-pushgateway", 9091)


def build_redis_image(engine) -> str:
    """Redis from Debian's package, laid out like the official image; returns repository:tag."""
    ensure_base_image(engine)
    return _build(engine, REDIS_REPOSITORY, {"Dockerfile": _REDIS_DOCKERFILE.format(base=BASE_IMAGE)})


def _build_go_binary_image(engine, repository: str, package: str, port: int) -> str:
    ensure_base_image(engine)
    dockerfile = _GO_BINARY_DOCKERFILE.format(base=BASE_IMAGE, package=package, port=port)
    return _build(engine, repository, {"Dockerfile": dockerfile})  # tagged with the Dockerfile's hash


def save_archive(engine, reference: str, directory: Path | None = None) -> Path:
    """`docker save` of `reference` into directory (default: the cache folder), once."""
    directory = directory or default_cache_dir() / "images"
    directory.mkdir(parents=True, exist_ok=True)
    image = engine.images.get(reference)
    archive = directory / f"{reference.rsplit('/', 1)[-1].replace(':', '-')}-{image.id.split(':')[-1][:12]}.tar"
    if not archive.exists():
        partial = archive.with_suffix(f".partial-{os.getpid()}")  # two test lanes may save the same image
        from mlops_assets.resources.container_engine import saved_name

        named = saved_name(image.tags, reference) or True
        with open(partial, "wb") as handle:
            for chunk in image.save(named=named):
                handle.write(chunk)
        partial.rename(archive)
    return archive
