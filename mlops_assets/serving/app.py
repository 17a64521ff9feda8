"""The prediction API: a Ray Serve deployment with a FastAPI ingress.

    POST /predict   {"instances": [{feature: value, ...}, ...]}
                    -> {"predictions": [...], "probabilities": [{class: p}, ...], "model": {name, version}}
    GET  /healthz   alive
    GET  /readyz    model loaded: its name and version, the engine that runs it (ONNX Runtime or
                    scikit-learn) and why not ONNX when it is scikit-learn (503 until then)
    GET  /openapi.json, /docs   the real feature names and types, from the model's signature

Built by `build_app(args)` (an application builder: `serve run mlops_assets.serving.app:build_app
model_uri=/models/champion`, or the `import_path` of a Serve config). The model to serve is the
deployment's `user_config` (`{"model_uri": ..., "tracking_uri": ...}`): changing only that
calls `reconfigure` on the running replicas, which load the new model beside the old one and
swap it in between two batches, so no request fails and later answers carry the new version.
A model that cannot be loaded is refused: the replica keeps the model it serves and /readyz
names the refused one (`rejected`), which is how the deployer knows to roll back.

Importable without Dagster: the container image ships this package and its dependencies only.
"""

# No `from __future__ import annotations`: FastAPI must see the request model built in
# build_app() as a real annotation, not a string it cannot resolve.
import asyncio
import json
import logging
import time
from typing import Any

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from ray import serve

from . import APP_NAME, DEPLOYMENT_NAME  # noqa: F401  (re-exported)
from . import model as model_lib
from .auth import PROTECTED_ROUTES, ApiKeys
from .schema import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    ErrorResponse,
    PredictResponse,
    ReadyResponse,
    error_details,
    request_model,
)

logger = logging.getLogger("ray.serve")

KNOWN_ROUTES = frozenset({"/predict", "/healthz", "/readyz", "/openapi.json", "/docs"})
# Batching: requests that arrive within BATCH_WAIT_S of each other share one DataFrame and one
# model call (measured: most of the win comes from building one frame per batch).
DEFAULT_BATCH_MAX_SIZE = 16
DEFAULT_BATCH_WAIT_S = 0.002
# Tries at loading a model in `reconfigure` before it is refused (see _load_with_retries).
LOAD_ATTEMPTS = 3


class ApiMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): refuses a protected route without a valid
    API key with 401 (when keys are configured; auth.py), bodies over the limit with 413, and
    records every request's status and latency."""

    def __init__(self, app, max_body_bytes: int, record, api_keys=None, served_by: str | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.record = record
        self.api_keys = api_keys  # auth.ApiKeys, or None: no key needed
        # On a cluster's node: every answer the replica gives says which node it runs on.
        self.served_by = [(b"x-served-by", served_by.encode())] if served_by else []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else "other"
        status = 500
        limit = self.max_body_bytes

        if self.api_keys is not None and path in PROTECTED_ROUTES:
            authorization = next((value for key, value in scope.get("headers", ()) if key == b"authorization"), None)
            refused = self.api_keys.check(authorization)
            if refused:
                code, message = refused
                extra = [(b"www-authenticate", b'Bearer realm="mlops-api"')] if code == 401 else []
                await _send_json(send, code, {"detail": [{"field": "authorization", "message": message,
                                                          "type": "unauthorized" if code == 401 else "unavailable"}]},
                                 extra)
                self.record(route, code, time.perf_counter() - started)
                return

        declared = next((value for key, value in scope.get("headers", ()) if key == b"content-length"), None)
        if declared is not None:
            # The server reads exactly Content-Length bytes: the header is the size.
            too_large = declared.isdigit() and int(declared) > limit
            body_receive = receive
        else:
            # Chunked: read up to the limit here. (A limit error raised while FastAPI reads
            # the body would become its generic 400.)
            body, more = bytearray(), True
            while more and len(body) <= limit:
                message = await receive()
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                more = message.get("more_body", False)
            too_large = len(body) > limit
            body_receive = _replay(bytes(body), receive)
        if too_large:
            await _send_json(send, 413, {"detail": [_too_large_detail(limit)]})
            self.record(route, 413, time.perf_counter() - started)
            return

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.served_by:
                    message = {**message, "headers": [*message.get("headers", ()), *self.served_by]}
            await send(message)

        try:
            await self.app(scope, body_receive, recording_send)
        finally:
            self.record(route, status, time.perf_counter() - started)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _too_large_detail(limit: int) -> dict[str, str]:
    return {"field": "body", "message": f"request body is larger than {limit} bytes", "type": "body_too_large"}


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    import json

    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                        *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _short_reason(exc: BaseException) -> str:
    """What /readyz (a public port) says about a refused model: our own errors' first line,
    which name what to fix; for anything else only its type (the whole text is in the replica's
    log, not on the public port)."""
    if isinstance(exc, model_lib.ModelSourceError):
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first[:300]}"
    return f"{type(exc).__name__} while loading the model (the replica's log has the details)"


def _bind_internal_grpc_to(host: str) -> None:
    """Ray 2.60 binds each replica's inter-deployment gRPC server to "[::]:0" (all interfaces),
    whatever the node address. Called in the replica before Serve starts that server, this
    makes it bind to `host` instead (a single-node instance reaches it on loopback)."""
    from ray.serve._private import replica as replica_module

    original = replica_module.add_port_to_grpc_server
    if getattr(original, "_mlops_host", None) == host:
        return

    def bind_to_host(server, address):
        if address.startswith("[::]:"):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    bind_to_host._mlops_host = host  # type: ignore[attr-defined]
    replica_module.add_port_to_grpc_server = bind_to_host


class _JsonBodyRequest(Request):
    """Request bodies parsed by pydantic-core's JSON parser instead of `json.loads` (measured
    0.056 ms against 0.133 ms for a 100-row body). Malformed JSON still raises
    `json.JSONDecodeError`, which FastAPI answers with the same 422 naming the body."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError as exc:
                raise json.JSONDecodeError(str(exc), body.decode("utf-8", "replace"), 0) from None
        return self._json


class _JsonBodyRoute(APIRoute):
    """FastAPI's documented way to give routes a custom Request class."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            return await handler(_JsonBodyRequest(request.scope, request.receive))

        return route


class _FastJSONResponse(JSONResponse):
    """Rendered by pydantic-core (0.03 ms against `json.dumps`' 0.18 ms for 100 rows with their
    probabilities). The content is plain JSON types; non-finite probabilities are already null."""

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


def _features_from_args(args: dict[str, Any]) -> list[model_lib.Feature]:
    if args.get("features"):
        return [model_lib.Feature(f["name"], f["type"]) for f in args["features"]]
    if not args.get("model_uri"):
        raise model_lib.ModelSourceError("build_app needs `features` or a `model_uri` to read the signature from")
    return model_lib.features_of(model_lib.ModelSource(args["model_uri"], args.get("tracking_uri")))


def build_app(args: dict[str, Any]):
    """The Serve application. `args` (all optional but one of features / model_uri):

    features          [{"name", "type"}...] the input schema (else read from model_uri's signature)
    model_uri         the initial model (MLflow URI or folder) when no user_config is given
    tracking_uri      MLflow tracking URI for `models:/` URIs
    max_rows          most instances per request (default 1000)
    max_body_bytes    largest request body (default 1 MiB)
    batch_max_size    most requests per model call (default 16; 1 disables batching)
    batch_wait_s      how long a batch waits to fill (default 0.002)
    title             OpenAPI title
    bind_host         bind the replicas' internal gRPC server to this address (e.g. 127.0.0.1)
    api_key_file      a file of API keys: POST /predict then needs `Authorization: Bearer <key>`
    """
    features = _features_from_args(args)
    max_rows = int(args.get("max_rows", DEFAULT_MAX_ROWS))
    max_body_bytes = int(args.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES))
    batch_max_size = int(args.get("batch_max_size", DEFAULT_BATCH_MAX_SIZE))
    batch_wait_s = float(args.get("batch_wait_s", DEFAULT_BATCH_WAIT_S))
    names = [f.name for f in features]
    PredictRequest = request_model(features, max_rows)

    app = FastAPI(
        title=str(args.get("title", "mlops-assets prediction API")),
        description="Predictions of the champion model. Feature names and types come from its MLflow signature; "
        "null means missing (imputed by the model's pipeline).",
        version="1",
    )
    app.router.route_class = _JsonBodyRoute
    errors = {422: {"model": ErrorResponse, "description": "invalid input"}, 413: {"model": ErrorResponse}}

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": error_details(list(exc.errors()))}, status_code=422)

    @serve.deployment(
        name=DEPLOYMENT_NAME,
        # Batching needs several requests in flight per replica.
        max_ongoing_requests=max(64, 4 * batch_max_size),
        ray_actor_options={"num_cpus": 0.1},
        health_check_period_s=2,
        health_check_timeout_s=10,
    )
    @serve.ingress(app)
    class PredictionAPI:
        def __init__(self) -> None:
            from .metrics import ApiMetrics

            model_lib.limit_threads()
            if args.get("bind_host"):
                _bind_internal_grpc_to(str(args["bind_host"]))
            self._model: model_lib.LoadedModel | None = None
            self._source: model_lib.ModelSource | None = None
            self._rejected: dict[str, Any] | None = None  # the last model refused by reconfigure
            self._metrics = ApiMetrics(features)
            api_keys = ApiKeys(str(args["api_key_file"])) if args.get("api_key_file") else None
            served_by = None
            if args.get("served_by_header"):
                import ray

                served_by = ray.util.get_node_ip_address()
            app.add_middleware(ApiMiddleware, max_body_bytes=max_body_bytes, record=self._metrics.request,
                               api_keys=api_keys, served_by=served_by)
            if args.get("model_uri"):
                # Without a user_config (plain `serve run`), serve the builder's model.
                self._load_sync(model_lib.ModelSource(args["model_uri"], args.get("tracking_uri")))

        # -- model lifecycle ---------------------------------------------------------------
        async def reconfigure(self, user_config: dict[str, Any]) -> None:
            source = model_lib.ModelSource.from_config(user_config)
            if source == self._source and self._model is not None:
                self._rejected = None  # back to the model in service (a rollback)
                return
            try:
                loaded = await self._load_with_retries(source)
            except Exception as exc:
                if self._model is None:
                    raise  # nothing to serve: Serve restarts the replica
                # A model that cannot load never replaces one that works: this replica keeps
                # answering with the current one, and /readyz says what it refused and why
                # (the deployer sees it and rolls the config back). Raising here would make
                # Serve stop the replica: every request would fail until a rollback.
                self._rejected = {
                    "model_uri": source.model_uri,
                    "version": source.version,
                    "error": _short_reason(exc),
                }
                logger.error(
                    f"kept model {self._model.name} version {self._model.version}: "
                    f"cannot load {source.model_uri} (version {source.version}): {exc}"
                )
                return
            self._rejected = None
            self._swap(source, loaded)

        async def _load_with_retries(self, source: model_lib.ModelSource) -> model_lib.LoadedModel:
            """Load off the event loop (requests keep being answered by the current model), a
            few times: a load can fail for a passing reason. Seen here (CPython 3.11.7):
            "AST constructor recursion depth mismatch" when the loop thread formats a traceback
            while this thread parses (https://github.com/python/cpython/issues/106905)."""
            for attempt in range(1, LOAD_ATTEMPTS + 1):
                try:
                    loaded = await asyncio.to_thread(model_lib.load, source)
                    self._check_signature(loaded)
                    return loaded
                except Exception as exc:
                    if attempt == LOAD_ATTEMPTS:
                        raise
                    logger.warning(f"loading {source.model_uri} failed (attempt {attempt} of {LOAD_ATTEMPTS}): {exc}")
                    await asyncio.sleep(0.5 * attempt)
            raise AssertionError("unreachable")

        def _load_sync(self, source: model_lib.ModelSource) -> None:
            loaded = model_lib.load(source)
            self._check_signature(loaded)
            self._swap(source, loaded)

        def _check_signature(self, loaded: model_lib.LoadedModel) -> None:
            if [f.name for f in loaded.features] != names or loaded.features != features:
                raise model_lib.ModelSourceError(
                    f"model {loaded.name} v{loaded.version} takes {[(f.name, f.type) for f in loaded.features]}, "
                    f"but this application was built for {[(f.name, f.type) for f in features]}; "
                    "redeploy the application (build_app) for a model with another signature"
                )

        def _swap(self, source: model_lib.ModelSource, loaded: model_lib.LoadedModel) -> None:
            previous = (self._model.name, self._model.version) if self._model else None
            self._model, self._source = loaded, source
            self._metrics.serving(loaded.name, loaded.version, previous, loaded.engine, loaded.engine_reason)
            logger.info(f"serving model {loaded.name} version {loaded.version} from {source.model_uri} with {loaded.engine}"
                        + (f" ({loaded.engine_reason})" if loaded.engine_reason else ""))

        def check_health(self) -> None:
            if self._model is None:
                raise RuntimeError("no model loaded")

        # -- routes ------------------------------------------------------------------------
        @app.get("/healthz", summary="Liveness")
        async def healthz(self) -> dict[str, str]:
            return {"status": "alive"}

        @app.get(
            "/readyz",
            summary="Readiness: the model is loaded",
            response_model=ReadyResponse,
            response_model_exclude_none=True,  # `rejected` only when there is one
            responses={503: {"model": ErrorResponse}},
        )
        async def readyz(self):
            if self._model is None:
                return JSONResponse({"detail": "model not loaded yet"}, status_code=503)
            ready = {"status": "ready", "model": {"name": self._model.name, "version": self._model.version},
                     "engine": self._model.engine}
            if self._model.engine_reason:
                ready["engine_reason"] = self._model.engine_reason
            if self._rejected:
                ready["rejected"] = self._rejected
            return ready

        @app.post(
            "/predict",
            summary="Predict the class of each instance",
            response_model=PredictResponse,
            responses=errors,
        )
        async def predict(self, body: PredictRequest):  # type: ignore[valid-type]
            instances = body.instances
            columns = {name: [getattr(row, name) for row in instances] for name in names}
            if batch_max_size > 1:
                result = await self._predict_batched(columns)
            else:
                result = self._predict_columns([columns])[0]
            # A ready-made response: FastAPI would otherwise re-validate the output model.
            return _FastJSONResponse(result)

        @serve.batch(max_batch_size=batch_max_size, batch_wait_timeout_s=batch_wait_s)
        async def _predict_batched(self, batch: list[dict[str, list]]) -> list[dict[str, Any]]:
            return self._predict_columns(batch)

        def _predict_columns(self, batch: list[dict[str, list]]) -> list[dict[str, Any]]:
            loaded = self._model  # one model for the whole batch, even if a swap lands meanwhile
            if loaded is None:
                raise RuntimeError("no model loaded")
            columns = batch[0] if len(batch) == 1 else {n: [v for part in batch for v in part[n]] for n in names}
            labels, proba = model_lib.predict_columns(loaded, columns)
            try:
                self._metrics.batch(columns, labels, loaded.version, loaded.categories)
            except Exception:  # a metric must never fail a prediction
                logger.exception("recording the input summary failed")
            ref = {"name": loaded.name, "version": loaded.version}
            results, start = [], 0
            for part in batch:
                end = start + len(part[names[0]])
                result: dict[str, Any] = {"predictions": labels[start:end], "model": ref}
                if proba is not None:
                    result["probabilities"] = [dict(zip(loaded.classes, p)) for p in proba[start:end]]
                results.append(result)
                start = end
            return results

    deployment = PredictionAPI
    if args.get("replica_start_attempts"):
        deployment = deployment.options(max_constructor_retry_count=int(args["replica_start_attempts"]))
    if args.get("model_uri"):
        deployment = deployment.options(
            user_config=model_lib.ModelSource(args["model_uri"], args.get("tracking_uri")).to_config()
        )
    return deployment.bind()
