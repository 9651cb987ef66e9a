"""One Settings object (pydantic-settings, variables prefixed FITCYCLE_), read once and passed along.
Embedded default: everything under one data dir (SQLite, a local object store, Celery's filesystem
broker). Distributed: set the database, S3 and Redis URLs."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; nothing reads the environment anywhere else."""

    model_config = SettingsConfigDict(env_prefix="FITCYCLE_", extra="ignore")

    data_dir: Path = Field(Path("data/fitcycle"), description="where the embedded default keeps everything")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in data_dir")
    storage: Literal["local", "s3"] = "local"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "fitcycle"
    s3_secure: bool = False
    broker_url: str | None = Field(None, description="Celery broker; default: filesystem:// under data_dir")
    default_queue: str = "fitcycle"
    queues: list[str] = Field(
        default_factory=lambda: ["fitcycle"],
        description="the queues a job may name (workers listen on them); default_queue must be one of them",
    )

    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text (a terminal) or JSON (a log collector); each names its job or request"
    )

    # Jobs: a worker renews its lease every lease_seconds/3; the reaper re-queues jobs whose lease expired
    # and queued jobs whose message has not been picked up for requeue_after_seconds.
    lease_seconds: float = 60.0
    reaper_interval_seconds: float = 10.0
    secure_cookies: bool | None = Field(
        None,
        description="mark the web UI's cookies Secure (https only); default: when the request came over https. "
        "Set it true behind a TLS-terminating proxy",
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="a worker's Prometheus metrics port (0: off; the API's are at /metrics)"
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="serve the API's Prometheus metrics on this port (0.0.0.0, a port kept inside the network) and "
        "answer 404 at /metrics on the API's own port; 0: at /metrics on the API's port (the embedded default)",
    )
    forwarded_allow_ips: str | None = Field(
        None,
        description="the proxies whose X-Forwarded-Proto and X-Forwarded-For `fitcycle serve` believes: addresses "
        "and networks, comma-separated (e.g. 172.16.0.0/12), '*' for any; default: uvicorn's (127.0.0.1, ::1)",
    )
    ui_session_days: int = Field(7, ge=1, le=90, description="how long a web UI sign-in lasts")
    loop_interval_seconds: float = Field(
        10.0, ge=0, description="the fleet loop (retraining policies, retention), in one API process; 0: off"
    )
    search_poll_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="how often the API process holding the searches lease advances hyperparameter searches; 0: off",
    )
    render_cpu_seconds: float = Field(
        30.0, gt=0, description="seconds a project may spend making show_batch pictures per minute (per API process)"
    )
    explain_cpu_seconds: float = Field(
        30.0,
        gt=0,
        description="seconds a project may spend on heatmaps (explained predictions) per minute (per API process)",
    )
    webhook_poll_seconds: float = Field(
        1.0, ge=0, description="how often each API process looks for due webhook deliveries; 0: it sends none"
    )
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=60, description="one delivery attempt's deadline")
    webhook_project_concurrency: int = Field(
        4, ge=1, le=64, description="a project's deliveries on their way at once, per API process"
    )
    webhook_total_concurrency: int = Field(
        64, ge=1, le=1024, description="all deliveries on their way, per API process"
    )
    requeue_after_seconds: float = 600.0
    checkpoint_every_seconds: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="a running job checkpoints once this long has passed since its last checkpoint (0: every "
        "epoch); a stop (cancel, SIGTERM) always checkpoints, so at most this much training is redone after a crash",
    )
    checkpoint_every_n_steps: int | None = Field(None, ge=1, description="also every this many training batches")
    drop_finished_checkpoints: bool = Field(
        True, description="delete a job's checkpoint once it succeeded and its export bundle is stored"
    )
    report_every_n_batches: int = 10
    cpu_memory_ceiling_mb: int | None = Field(
        None,
        ge=64,
        description="a CPU worker's training step that would pass this many MiB (its resident memory plus the "
        "step's activations) halves its micro-batch instead, as CUDA's out-of-memory error does; unset: no ceiling",
    )
    db_retry_seconds: float = Field(
        120.0, ge=0, description="a worker retries a database write for this long (backoff) while the database is away"
    )
    store_retry_seconds: float = Field(
        120.0, ge=0, description="the object store: how long a failed read or write is retried (backoff)"
    )
    db_outage_retry_after: int = Field(5, ge=1, description="Retry-After of a 503 while the database is away")

    # Request bodies, checked before a byte of the body is read (Content-Length) and while it streams.
    max_upload_bytes: int = Field(2 * 1024**3, description="POST /datasets: the whole multipart body")
    max_weights_bytes: int = Field(
        1024**3, description="POST /weights: the whole multipart body (one pretrained weights file, ~50-200 MB)"
    )
    max_json_body_bytes: int = Field(1024**2, description="every other request with a body")
    fleet_weights_projects: list[str] = Field(
        default_factory=list,
        description="the projects whose admin keys may add to the fleet's weights store (POST /weights), as JSON: "
        '["ops"]. The store serves every project, so an operator names them; empty: none may',
    )
    max_edits_body_bytes: int = Field(
        30 * 1024**2, description="feedback and dataset-version cuts, which may carry base64 masks"
    )
    max_archive_files: int = Field(100_000, description="entries of one archive, whatever their type")
    max_extracted_bytes: int = 8 * 1024**3
    max_archive_ratio: float = Field(200.0, description="expansion cap, per zip entry and per archive")

    # Prediction.
    predictor: Literal["onnx", "torch"] = Field(
        "onnx",
        description="what runs a served model on the CPU: ONNX Runtime when its bundle has a model.onnx (else "
        "PyTorch), or always PyTorch",
    )
    predictor_cache_size: int = 4
    lookup_cache_seconds: float = Field(
        1.0,
        ge=0,
        le=2,
        description="how long an API process keeps a key's caller and a model's row without asking the database "
        "again (0: it asks on every request). A revocation, a project's new settings, an ended web UI session and "
        "a deleted model are pushed to every API process at once; this is the bound when such a push is lost",
    )
    max_predict_files: int = 16
    max_predict_file_bytes: int = 20 * 1024**2

    # Quotas per project (defaults a single user never meets). Requests per minute are counted in Redis
    # when the broker is Redis (one count for the whole API fleet), else in the API process.
    max_active_jobs: int = Field(100, description="queued + running jobs of one project")
    max_active_searches: int = Field(10, ge=1, description="running hyperparameter searches of one project")
    max_event_streams: int = Field(20, description="open /jobs/{id}/events streams of one project")
    max_stored_bytes: int = Field(100 * 1024**3, description="dataset files and job artifacts of one project")
    requests_per_minute: int = Field(1200, description="requests of one project (0: no limit)")

    url_fetch_timeout_seconds: float = Field(10.0, description="one deadline for the whole fetch, redirects too")
    url_fetch_max_bytes: int = 20 * 1024**2
    url_fetch_max_redirects: int = 3
    url_fetch_allow_hosts: list[str] = Field(
        default_factory=list, description="host[:port] exempt from the private-address guard (tests, internal mirrors)"
    )

    # Predict micro-batching: concurrent single-image requests for one model share one forward pass.
    predict_batch_window_ms: float = Field(
        5.0, ge=0, le=1000, description="how long a request waits for others to join its batch (0: no batching)"
    )
    predict_max_batch: int = Field(32, ge=1, le=1024, description="the most images in one forward pass")

    @model_validator(mode="after")
    def _default_queue_is_a_queue(self) -> Settings:
        if self.default_queue not in self.queues:
            self.queues = [*self.queues, self.default_queue]
        return self

    @cached_property
    def sqlalchemy_url(self) -> str:
        """The database URL, defaulting to a SQLite file in data_dir."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'fitcycle.db').resolve()}"

    @cached_property
    def celery_broker_url(self) -> str:
        """The broker URL, defaulting to Celery's filesystem transport under data_dir."""
        return self.broker_url or "filesystem://"

    @property
    def is_embedded_broker(self) -> bool:
        """True when the broker is the filesystem transport (no server)."""
        return self.celery_broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem transport keeps its messages."""
        return (self.data_dir / "broker").resolve()

    @property
    def objects_dir(self) -> Path:
        """The local object store's root."""
        return (self.data_dir / "objects").resolve()

    @property
    def cache_dir(self) -> Path:
        """Where workers and the API keep local copies of datasets and bundles."""
        return (self.data_dir / "cache").resolve()
