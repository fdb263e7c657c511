"""Runtime settings, read once from the environment.

Everything a pod can be told comes through environment variables with the prefix
``MODELSHIP_`` (pydantic-settings), so the operator configures a pod with plain ``env``
entries and Secrets. Registry credentials are *not* here: the pull reads
``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` as MLflow's client does everywhere else. The Redis URL is
read from ``MODELSHIP_REDIS_URL`` or, as a Secret usually names it, plain ``REDIS_URL``.

The ``shadow_*`` settings are set by the operator during a rollout's shadow phase, on the
stable version's pods: they mirror a share of their prediction requests to the canary's
Service (:mod:`modelship_runtime.shadow`), whose runtime compares its answers with the
stable's (:mod:`modelship_runtime.agreement`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    """Settings of one runtime process (one model, one pod)."""

    model_config = SettingsConfigDict(env_prefix="MODELSHIP_", extra="ignore",
                                      populate_by_name=True)

    model_uri: str | None = None
    """`models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/RUN_ID/PATH` or
    `models:/MODEL_ID`; pulled at start when no model_dir."""

    model_dir: Path | None = None
    """A directory written by `modelship-runtime pull` (or any MLflow sklearn model
    directory, or a directory holding one joblib file)."""

    model_name: str | None = None
    """Name to serve under when the model directory carries no metadata (default: the
    directory name)."""

    model_version: str | None = None
    """Version to report when the model directory carries no metadata (default: "0")."""

    host: str = "0.0.0.0"
    """Interface to listen on."""

    port: int = Field(default=8080, ge=1, le=65535)
    """TCP port to listen on."""

    grpc_port: int = Field(default=8081, ge=0, le=65535)
    """TCP port of the Open Inference Protocol V2 over gRPC (same host, same process and
    data plane as HTTP); 0: no gRPC server (and grpc is not even imported)."""

    grpc_reflection: bool = True
    """Serve gRPC Server Reflection (``grpc.reflection.v1`` and ``v1alpha``) on the gRPC
    port, so grpcurl, grpcui and Postman find the V2 service without its .proto; behind
    the API keys, when set, as ModelMetadata is. false: not served (UNIMPLEMENTED)."""

    allow_pickle: bool = True
    """Load models serialized with pickle, cloudpickle or joblib: unpickling runs code
    from the artifact, so this trusts whoever can write to the registry. On by default
    because MLflow 2 logged scikit-learn models as cloudpickle (MLflow 3 logs skops).
    false: serve skops models only; a pickle is refused at start (exit 8)."""

    trusted_types: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Fully-qualified type names a skops model may hold beyond skops' safe defaults,
    scikit-learn's own classes and numpy dtypes, scalars and ufuncs (comma-separated, e.g.
    ``mypkg.features.Clipper,xgboost.sklearn.XGBClassifier``). Only this runtime's
    settings grant trust: the ``skops_trusted_types`` an MLmodel lists are ignored."""

    max_rows: int = Field(default=1000, ge=1, validation_alias=AliasChoices(
        "MODELSHIP_MAX_ROWS", "MODELSHIP_MAX_BATCH_SIZE"))
    """Largest number of rows one request may carry; more is a 400. Also read from the
    older name ``MODELSHIP_MAX_BATCH_SIZE``."""

    max_columns: int = Field(default=10_000, ge=1)
    """Largest number of values in one row; more is a 400 (a model of known width
    refuses any other width anyway)."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request body in bytes; more is a 413 (from Content-Length before the body
    is read, or while a chunked body streams in)."""

    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    """Largest request line and headers in bytes; more is a 431 and the connection is
    closed."""

    header_timeout_seconds: float = Field(default=10.0, gt=0.0, le=3600.0)
    """A connection must send a request's headers within this many seconds of opening (or
    of the request's first byte), then its body within as many more; otherwise it is
    closed. Ends slowloris clients and connections that never send anything."""

    keepalive_timeout_seconds: int = Field(default=75, ge=1, le=3600)
    """Close a kept-alive connection idle this long between two requests. Longer than
    the 60 s ingress-nginx keeps idle upstream connections, so the proxy closes first and
    never sends on a connection the runtime is closing."""

    max_concurrency: int = Field(default=64, ge=1)
    """Most requests in flight at once; more are answered 503 with ``Retry-After: 1``
    (health, readiness and /metrics are always answered). Memory in flight is bounded by
    this times ``max_body_bytes``."""

    max_connections: int = Field(default=1024, ge=8)
    """Most open client connections (lowered at start to 128 under the open-file limit,
    which is raised to its hard limit). Past it, a new connection closes the connection
    idle the longest; when none is idle it is answered 503 and closed."""

    @property
    def max_batch_size(self) -> int:
        """The older name of ``max_rows``."""
        return self.max_rows

    microbatch: bool = True
    """Predict concurrent requests together in one estimator call. While one predict call
    runs, arriving requests queue and go together into the next; a lone request is
    predicted at once."""

    microbatch_max_size: int = Field(default=64, ge=1)
    """Most rows one shared predict call takes."""

    microbatch_max_wait_ms: float = Field(default=2.0, ge=0.0, le=100.0)
    """Before a shared predict call, wait at most this long for the requests recently in
    flight together to queue up. Only when a predict call costs more than this wait and
    more than one request was recently in flight (a lone client never waits). 0: never
    wait; batches then form only while a predict call runs."""

    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MODELSHIP_REDIS_URL", "REDIS_URL")
    )
    """Redis URL of the prediction cache (e.g. redis://host:6379/0); unset: no cache."""

    cache_ttl_seconds: int = Field(default=300, ge=1)
    """Lifetime of a cached prediction."""

    cache_timeout_ms: float = Field(default=50.0, gt=0.0)
    """Longest wait for Redis per call; slower means serving without the cache."""

    cache_retry_seconds: float = Field(default=5.0, ge=0.0)
    """After a Redis error, serve without the cache for this long before trying again."""

    api_keys_file: Path | None = None
    """File (one key per line) or directory of files (a mounted Secret) holding API keys.
    Set: every model endpoint needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    Re-read within about a second of a change (a rotated Secret needs no restart)."""

    rate_limit_requests: int = Field(default=0, ge=0)
    """Requests each API key (without API keys: all clients together) may make per
    period to the model endpoints; more is a 429 with Retry-After. Counted in the cache's
    Redis, so shared by all replicas; per pod when there is no Redis or it is down.
    0: no limit."""

    rate_limit_period_seconds: int = Field(default=60, ge=1, le=86400)
    """Length of the rate limit's window, in seconds."""

    pull_attempts: int = Field(default=5, ge=1)
    """Attempts to pull a model before giving up (transient failures only)."""

    pull_backoff_seconds: float = Field(default=1.0, ge=0.0)
    """First wait between pull attempts; doubles each time."""

    drain_seconds: float = Field(default=5.0, ge=0.0, le=3600.0)
    """On SIGTERM (or SIGINT), keep serving this long before closing: readiness
    (`/readyz`, `/v2/health/ready`) answers 503 at once and responses carry
    `Connection: close`, while new connections and requests are still answered, so the
    routers that still send traffic here (endpoint removal reaches them a second or two
    after the signal) lose nothing. Then the server stops accepting and finishes the
    requests in flight. A second SIGTERM or SIGINT ends the drain early. 0: stop
    accepting at once."""

    shutdown_timeout_seconds: int = Field(default=30, ge=1, le=3600)
    """After the drain, the longest wait for requests still in flight before exiting."""

    log_level: str = "INFO"
    """Log level of the runtime's loggers."""

    log_json: bool = True
    """One JSON object per log line (false: plain text for humans)."""

    access_log: bool = False
    """Log every request (costs throughput; metrics already count requests)."""

    shadow_url: str = ""
    """Base URL of the canary's Service (e.g. http://iris--canary.ml.svc:8080): mirror a
    share of the prediction requests there after answering them. Empty: no mirroring."""

    shadow_config_file: Path | None = None
    """A JSON file naming the mirror (``{"mirrorFrom": VERSION, "url": URL, "fraction": F}``),
    re-read every ``shadow_config_poll_seconds``: the operator's ConfigMap ``NAME--shadow``,
    mounted, so a shadow phase starts and ends without a restart. Ignored when
    ``shadow_url`` is set."""

    shadow_config_poll_seconds: float = Field(default=2.0, gt=0.0, le=300.0)
    """How often ``shadow_config_file`` is re-read."""

    shadow_fraction: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of the successful prediction requests that are mirrored (sampled at random)."""

    shadow_queue: int = Field(default=256, ge=1, le=100_000)
    """Mirrored requests waiting in the sender process; when full, more are dropped (and
    counted)."""

    shadow_timeout_seconds: float = Field(default=2.0, gt=0.0, le=60.0)
    """Longest wait for the canary to answer one mirrored request (connect included)."""

    shadow_concurrency: int = Field(default=4, ge=1, le=64)
    """Mirrored requests in flight at once from the sender process (one kept-alive
    connection each)."""

    shadow_when_busy: Literal["shed", "mirror"] = "shed"
    """A prediction request chosen for mirroring while others are being served, or while
    the serving process has used more than 75% of a core over the last 50 ms: ``shed``
    (not mirrored, counted as ``shed``: copies come only from moments the pod has CPU
    to spare) or ``mirror`` (mirrored anyway, the sender's priority decides)."""

    shadow_sender_priority: Literal["idle", "low", "normal"] = "idle"
    """CPU priority of the shadow sender process. ``idle`` (Linux SCHED_IDLE): it runs only
    on CPU time the serving process leaves, so mirroring never delays a client's request
    and, on a saturated pod, mirrored copies are dropped instead; ``low``: nice 19;
    ``normal``: the serving process's own priority (mirrors more under load, at the
    clients' expense)."""

    shadow_max_prediction_bytes: int = Field(default=8192, ge=64, le=65536)
    """Largest X-Modelship-Stable-Prediction header; a request whose predictions encode
    larger is not mirrored (counted as skipped)."""

    shadow_token: SecretStr | None = None
    """Shared secret of a rollout's stable and canary pods. Set on the stable, mirrored
    requests carry it in X-Modelship-Shadow; set on the canary, only requests carrying it
    are compared (so clients cannot forge agreement). Unset: X-Modelship-Shadow is "1"."""

    shadow_log_per_minute: int = Field(default=10, ge=0)
    """Most disagreeing mirrored requests logged per minute (0: none)."""

    shadow_log_rel_diff: float = Field(default=0.05, ge=0.0)
    """Regressors: a mirrored row counts as disagreeing, for the log only, when its
    relative difference |canary - stable| / max(|canary|, |stable|) is above this."""

    @field_validator("trusted_types", mode="before")
    @classmethod
    def _split_types(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [t for t in text.replace(",", " ").split() if t]
        return value

    @field_validator("trusted_types")
    @classmethod
    def _check_types(cls, value: list[str]) -> list[str]:
        for name in value:
            if "." not in name or not all(p.isidentifier() for p in name.split(".")):
                raise ValueError(f"{name!r} is not a fully-qualified type name "
                                 "(module.Type, e.g. sklearn.tree._tree.Tree)")
        return value

    @field_validator("shadow_url")
    @classmethod
    def _check_shadow_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, "
                             "e.g. http://iris--canary.ml.svc:8080")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must have no query, fragment or credentials")
        return value.rstrip("/")
