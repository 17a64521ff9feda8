"""Prediction API benchmark (`make bench-serving`): one run, one model, one machine, one load
generator (wrk), 15 s per cell; single-row and 100-row requests at concurrency 8 and 32:

  (a)  the Ray Serve application of mlops_assets.serving, deployed as the local target does,
       serving through ONNX Runtime (the engine selected_model picks when parity holds)
  (a') the same application serving through the scikit-learn pipeline (the fallback engine)
  (b)  a bare FastAPI + uvicorn process with the scikit-learn pipeline, 1 worker (bench/bare_server.py)
  (c)  `mlflow models serve`, 1 worker
  (d)  Seldon's MLServer with its scikit-learn runtime and adaptive batching (16 requests, 2 ms),
       in its own virtual environment (created once under ~/.cache/mlops-assets/tools)
  (e)  a bare FastAPI + uvicorn process with ONNX Runtime, 1 worker (bench/bare_onnx_server.py):
       the practical ceiling of one Python process

Before the servers, the model call alone (inputs built from request columns, then the
pipeline or the session) for 1 and 16 rows, both engines, in this process.

Prints requests/s, p50, p99, errors, the ratios of (a) to every other server, and each server's
memory (PSS of all its processes). Every server gets OMP_NUM_THREADS=1 (see
serving/model.limit_threads): without it OpenMP's spinning threads make every server several
times slower on 2 cores. --pin-wrk runs wrk on the last core only (taskset).

    python bench/serving_bench.py [--seconds 15] [--only a,a',b,c,d,e] [--variants] [--pin-wrk]

--variants also measures (a) with one fast path switched off at a time (single row only).
Uses the champion of MLOPS_HOME's registry (runs the ML phase first if there is none). The
request rows are the champion's input example without missing values (MLServer's typed
tensors cannot carry a JSON null in a float column), the same rows for every server.
Everything listens on 127.0.0.1, on ports away from `make run`'s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlops_assets.resources.ray_serve import RayServe  # noqa: E402
from mlops_assets.serving.runtime import instance_processes  # noqa: E402
from mlops_assets.settings import load_settings  # noqa: E402

PORTS = {"a": 28100, "b": 28101, "c": 28102, "d": 28103, "e": 28104}
# uvloop 0.22 raises in MLServer 1.7.1's inference-pool workers (asyncio.get_event_loop() with no
# running loop): they die at start. 0.21 is what MLServer was released against.
MLSERVER_REQUIREMENTS = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22"]
TOOLS_DIR = Path(os.environ.get("MLOPS_TOOLS_DIR", Path.home() / ".cache" / "mlops-assets" / "tools"))
PIN_WRK: list[str] = []  # ["taskset", "-c", "N"] with --pin-wrk
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY")):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, "
    .. "\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def champion(settings):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        return client.get_model_version_by_alias(settings.model_name, "champion")
    except Exception:
        return None


def ensure_model(settings):
    version = champion(settings)
    if version is None:
        print("no champion in the registry yet: running the ML phase", flush=True)
        subprocess.run([sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase"], check=True, cwd=ROOT)
        version = champion(settings)
    return version


def download(settings, version, dst: Path) -> Path:
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}", dst_path=str(dst)))


def instances(folder: Path, rows: int) -> list[dict]:
    example = json.loads((folder / "input_example.json").read_text())
    records = [dict(zip(example["columns"], row)) for row in example["data"]]
    records = [r for r in records if not any(v is None or (isinstance(v, float) and math.isnan(v)) for v in r.values())]
    return [records[i % len(records)] for i in range(rows)]


def v2_body(folder: Path, rows: list[dict]) -> dict:
    """The same rows in the V2 inference protocol (MLServer), decoded as a pandas frame."""
    columns = json.loads(__import__("yaml").safe_load((folder / "MLmodel").read_text())["signature"]["inputs"])
    inputs = []
    for column in columns:
        numeric = column["type"] in ("double", "float", "long", "integer")
        inputs.append({"name": column["name"], "shape": [len(rows)], "datatype": "FP64" if numeric else "BYTES",
                       "data": [row[column["name"]] for row in rows]})
    return {"parameters": {"content_type": "pd"}, "inputs": inputs}


def tree(pid: int) -> list[int]:
    from mlops_assets.serving.runtime import _processes

    table = _processes()
    found, stack = set(), [pid]
    while stack:
        current = stack.pop()
        if current in found or current not in table:
            continue
        found.add(current)
        stack.extend(p for p, (ppid, _) in table.items() if ppid == current)
    return sorted(found)


def pss_mib(pids) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def wait_http(url: str, body: dict, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.post(url, json=body, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def wrk(url: str, body_file: Path, connections: int, seconds: int) -> dict:
    script = body_file.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    threads = min(2, connections)
    out = subprocess.run(
        [*PIN_WRK, "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body_file)},
    )
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    result = json.loads(line[len("RESULT ") :])
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "errors": errors,
        "requests": result["requests"],
    }


def measure(name: str, url: str, bodies: dict, seconds: int, results: dict, cells) -> None:
    for rows, conns in cells:
        # Warm-up: connections, caches, a first batch.
        wrk(url, bodies[rows], conns, 2)
        results[(name, rows, conns)] = cell = wrk(url, bodies[rows], conns, seconds)
        print(
            f"  {name} rows={rows:<3} c={conns:<2} {cell['rps']:8.0f} req/s  p50 {cell['p50_ms']:6.1f} ms  "
            f"p99 {cell['p99_ms']:6.1f} ms  errors {cell['errors']}",
            flush=True,
        )


def ray_app(state: Path, **options) -> RayServe:
    return RayServe(
        state_dir=str(state),
        api_port=PORTS["a"],
        metrics_port=28180,
        gcs_port=28179,
        client_port=28178,
        haproxy_metrics_port=28177,
        haproxy_stats_port=28176,
        fallback_proxy_port=28175,
        replica_port_min=36100,
        replica_port_max=36199,
        **options,
    )


def model_call(settings, version) -> dict:
    """Median time of one model call (inputs from request columns, then the engine) per engine
    and row count, in this process, on one thread."""
    from mlops_assets.serving import model as model_lib

    model_lib.limit_threads()
    manifest, _, _ = model_lib.registered_serving(settings.tracking_uri, version.name, str(version.version))
    work = Path(tempfile.mkdtemp(prefix="mlops-bench-call-"))
    try:
        folder, _, _ = model_lib.download(model_lib.ModelSource(f"models:/{version.name}/{version.version}",
                                                                settings.tracking_uri), work)
        engines = {engine: model_lib.load_folder(folder, version.name, str(version.version), manifest, engine, fallback=False)
                   for engine in ("onnx", "sklearn")}
        figures = {}
        for rows in (1, 16):
            records = instances(folder, rows)
            columns = {f.name: [r[f.name] for r in records] for f in engines["onnx"].features}
            for engine, loaded in engines.items():
                for _ in range(50):
                    model_lib.predict_columns(loaded, columns)
                times = []
                for _ in range(1000 if engine == "onnx" else 300):
                    started = time.perf_counter()
                    model_lib.predict_columns(loaded, columns)
                    times.append(time.perf_counter() - started)
                figures[(engine, rows)] = sorted(times)[len(times) // 2] * 1000
        print("\n| model call (median, ms) | 1 row | 16 rows |\n| --- | --- | --- |")
        for engine in ("onnx", "sklearn"):
            print(f"| {engine} | {figures[(engine, 1)]:.3f} | {figures[(engine, 16)]:.3f} |")
        print(f"| sklearn / onnx | {figures[('sklearn', 1)] / figures[('onnx', 1)]:.1f}x | "
              f"{figures[('sklearn', 16)] / figures[('onnx', 16)]:.1f}x |", flush=True)
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def mlserver_command(folder: Path, work: Path, port: int) -> list[str]:
    """(d): MLServer in its own venv, the pipeline dumped with joblib (its sklearn runtime loads
    joblib/pickle files; a file this benchmark wrote itself), adaptive batching on."""
    import joblib

    from mlops_assets.serving import model as model_lib

    venv = TOOLS_DIR / "mlserver-1.7.1-uvloop0.21"
    if not (venv / ".installed").exists():
        print("(d) creating MLServer's virtual environment (once per machine)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        uv = Path(sys.executable).parent / "uv"
        pins = [*MLSERVER_REQUIREMENTS, f"scikit-learn=={__import__('sklearn').__version__}"]
        install = ([str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *pins] if uv.exists()
                   else [str(venv / "bin" / "pip"), "install", "-q", *pins])
        subprocess.run(install, check=True)
        (venv / ".installed").touch()
    manifest = model_lib.manifest_text(model_lib.files_manifest(folder))
    pipeline = model_lib.load_folder(folder, files_sha256=manifest, engine="sklearn").pipeline
    models = work / "mlserver"
    (models / "penguins").mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, models / "penguins" / "model.joblib")
    (models / "penguins" / "model-settings.json").write_text(json.dumps({
        "name": "penguins", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}, "max_batch_size": 16, "max_batch_time": 0.002}))
    (models / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": port + 10, "metrics_port": port + 20,
        "metrics_endpoint": None}))
    return [str(venv / "bin" / "mlserver"), "start", str(models)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--only", default="call,a,a',b,c,d,e")
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--pin-wrk", action="store_true", help="run wrk on the last core only")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk (make bench-serving does it)", file=sys.stderr)
        return 2
    if args.pin_wrk:
        PIN_WRK[:] = ["taskset", "-c", str((os.cpu_count() or 1) - 1)]
    settings = load_settings()
    version = ensure_model(settings)
    work = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    folder = download(settings, version, work / "model")
    bodies, mlflow_bodies, v2_bodies = {}, {}, {}
    for rows in (1, 100):
        records = instances(folder, rows)
        bodies[rows] = work / f"body{rows}.json"
        bodies[rows].write_text(json.dumps({"instances": records}))
        mlflow_bodies[rows] = work / f"mlflow{rows}.json"
        mlflow_bodies[rows].write_text(json.dumps({"dataframe_records": records}))
        v2_bodies[rows] = work / f"v2-{rows}.json"
        v2_bodies[rows].write_text(json.dumps(v2_body(folder, records)))
    cells = [(1, 8), (1, 32), (100, 8), (100, 32)]
    results: dict = {}
    memory: dict = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    print(f"model {version.name} v{version.version}; {args.seconds}s per cell; wrk -t2"
          + (f" pinned to core {PIN_WRK[-1]}" if PIN_WRK else ""), flush=True)
    if "call" in only:
        model_call(settings, version)

    if only & {"a", "a'"}:
        app = ray_app(work / "serving")
        try:
            uri = f"models:/{version.name}/{version.version}"
            for name, engine in (("a", "onnx"), ("a'", "sklearn")):
                if name not in only:
                    continue
                started = time.monotonic()
                app.deploy(uri, str(version.version), tracking_uri=settings.tracking_uri, engine=engine)
                ready = requests.get(f"{app.api_url}/readyz", timeout=10).json()
                assert ready.get("engine") == engine, ready
                print(f"({name}) Ray Serve serving with {engine}, ready in {time.monotonic() - started:.0f}s", flush=True)
                measure(name, f"{app.api_url}/predict", bodies, args.seconds, results, cells)
                memory[name] = pss_mib(instance_processes(app.runtime()))
            if args.variants:
                variants(app, version, settings, bodies, args.seconds, results, memory)
        finally:
            app.shutdown()

    servers = [
        ("b", lambda: [sys.executable, str(ROOT / "bench" / "bare_server.py"), str(folder), str(PORTS["b"])], bodies,
         "/predict"),
        ("c", lambda: ["mlflow", "models", "serve", "-m", str(folder), "--env-manager", "local", "-h", "127.0.0.1",
                       "-p", str(PORTS["c"]), "--workers", "1"], mlflow_bodies, "/invocations"),
        ("d", lambda: mlserver_command(folder, work, PORTS["d"]), v2_bodies, "/v2/models/penguins/infer"),
        ("e", lambda: [sys.executable, str(ROOT / "bench" / "bare_onnx_server.py"), str(folder), str(PORTS["e"])], bodies,
         "/predict"),
    ]
    for name, command, body_set, path in servers:
        if name not in only:
            continue
        proc = subprocess.Popen(command(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            url = f"http://127.0.0.1:{PORTS[name]}{path}"
            wait_http(url, json.loads(body_set[1].read_text()))
            measure(name, url, body_set, args.seconds, results, cells)
            memory[name] = pss_mib(tree(proc.pid))
        finally:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # MLServer's pool workers may ignore SIGTERM
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)

    report(results, memory, cells)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def variants(app: RayServe, version, settings, bodies, seconds, results, memory) -> None:
    """(a) with one fast path off at a time, single-row cells only."""
    cells = [(1, 8), (1, 32)]
    uri = f"models:/{version.name}/{version.version}"
    plans = [
        ("a:no-batch", {"batch_max_size": 1}),
        ("a:1-replica", {"num_replicas": 1}),
        ("a:no-haproxy", {"haproxy": False}),
        ("a:defaults", {"haproxy": False, "throughput_optimized": False, "batch_max_size": 1}),
    ]
    for name, options in plans:
        app.shutdown()
        variant = ray_app(Path(app.state_dir), **options)
        variant.deploy(uri, str(version.version), tracking_uri=settings.tracking_uri)
        measure(name, f"{variant.api_url}/predict", bodies, seconds, results, cells)
        memory[name] = pss_mib(instance_processes(variant.runtime()))
        variant.shutdown()


def report(results: dict, memory: dict, cells) -> None:
    others = [n for n in ("a'", "b", "c", "d", "e") if any(k[0] == n for k in results)]
    print("\n| server | rows | c | req/s | p50 ms | p99 ms | errors | " + " | ".join(f"a/{n}" for n in others) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in others) + " |")
    names = sorted({k[0] for k in results}, key=lambda n: (n[0], n))
    for name in names:
        for rows, conns in cells:
            cell = results.get((name, rows, conns))
            if not cell:
                continue
            ratios = [""] * len(others)
            if name == "a":
                for i, other in enumerate(others):
                    base = results.get((other, rows, conns))
                    ratios[i] = f"{cell['rps'] / base['rps']:.2f}" if base and base["rps"] else ""
            print(
                f"| {name} | {rows} | {conns} | {cell['rps']:.0f} | {cell['p50_ms']:.1f} | {cell['p99_ms']:.1f} | "
                f"{cell['errors']} | " + " | ".join(ratios) + " |"
            )
    print("\nmemory (PSS of all the server's processes, MiB): " + ", ".join(f"{k}={v:.0f}" for k, v in memory.items()))


if __name__ == "__main__":
    sys.exit(main())
