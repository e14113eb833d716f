"""The gateway's settings: one dataclass, filled from flags (`genguard gateway --help`) or the
environment (GENGUARD_GATEWAY_*, what the server image and Kubernetes set)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields
from pathlib import Path

from genguard.protocol import GATEWAY_PORT as PORT
from genguard.protocol import GRPC_PORT, HOST

ENV_PREFIX = "GENGUARD_GATEWAY_"


class SettingsError(ValueError):
    """A setting that can't work (say which one and what to do)."""


@dataclass(frozen=True)
class Settings:
    triton_url: str = f"{HOST}:{GRPC_PORT}"  # Triton's gRPC host:port
    host: str = HOST
    port: int = PORT
    api_keys_file: str | None = None      # one key per line (# comments); required off loopback
    max_body_bytes: int = 64 << 20        # a request body larger than this is refused (413) while reading
    max_images: int = 64                  # images per request
    deadline_s: float = 60.0              # queue wait + inference, per request (504 after)
    max_concurrency: int = 8              # requests forwarded to Triton at once
    max_queue: int = 16                   # admitted requests waiting for one of those slots (429 beyond)
    retry_after_s: int = 1                # Retry-After on 429 and 503
    triton_retries: int = 1               # reconnect attempts before answering 503
    triton_backoff_s: float = 0.25
    public_metrics: bool = False          # GET /metrics without a key (when keys are on)
    cache: str = "memory"                 # answer cache: off | memory (per gateway) | redis://host:port/db (shared)
    cache_max_entries: int = 100_000      # memory: images remembered (LRU)
    cache_max_bytes: int = 256 << 20      # memory: bytes of answers remembered (LRU)
    cache_ttl_s: int = 86_400             # redis: an entry's lifetime
    cache_identity_s: float = 1.0         # how often the served models/fusion are re-read for the cache key
    video_max_bytes: int = 32 << 20       # a clip on POST /v1/detect (larger: the jobs API, POST /v1/jobs)
    video_max_duration_s: float = 60.0    # a clip's duration on POST /v1/detect (longer: POST /v1/jobs)
    # async jobs (genguard/jobs, docs/jobs.md)
    state_dir: str = str(Path.home() / ".local" / "state" / "genguard")  # the SQLite jobs store and the spool
    jobs_db: str = ""                     # SQLAlchemy URL (postgresql://...); default: SQLite in state_dir
    jobs_spool: str = ""                  # uploaded bytes: a folder or an fsspec URL; default: state_dir/spool
    jobs_workers: int = 2                 # job workers in the gateway process (0: only `genguard worker` runs jobs)
    jobs_batch: int = 8                   # items a worker sends to Triton at once (results are written per item)
    jobs_lease_s: float = 30.0            # a running job whose worker stops renewing this goes back to the queue
    jobs_max_claims: int = 5              # a job claimed this often without finishing fails
    jobs_retention_s: float = 7 * 86400.0  # finished jobs, their results and bytes are deleted after this
    jobs_callback_hosts: str = ""         # allowed callback hosts: names, *.suffix, IPs or CIDRs (comma-separated)
    jobs_webhook_attempts: int = 8        # webhook deliveries tried before the job's webhook is `failed`
    jobs_webhook_backoff_s: float = 5.0   # first retry delay; doubled per attempt (capped at one hour)

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_images < 1 or self.max_concurrency < 1 or self.max_queue < 0:
            raise SettingsError("max_body_bytes, max_images and max_concurrency must be >= 1, max_queue >= 0")
        if self.video_max_bytes < 1 or self.video_max_duration_s <= 0:
            raise SettingsError("video_max_bytes must be >= 1 and video_max_duration_s > 0")
        if self.deadline_s <= 0 or self.retry_after_s < 0 or self.triton_retries < 0 or self.triton_backoff_s < 0:
            raise SettingsError("deadline_s must be > 0; retry_after_s, triton_retries, triton_backoff_s >= 0")
        if self.cache not in ("off", "memory") and not self.cache.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"cache={self.cache!r}: expected off, memory or a redis:// URL")
        if self.cache_max_entries < 1 or self.cache_max_bytes < 1 or self.cache_ttl_s < 1 or self.cache_identity_s < 0:
            raise SettingsError("cache_max_entries, cache_max_bytes, cache_ttl_s must be >= 1, cache_identity_s >= 0")
        if self.jobs_workers < 0 or self.jobs_batch < 1 or self.jobs_lease_s <= 0 or self.jobs_max_claims < 1 \
                or self.jobs_webhook_attempts < 1 or self.jobs_webhook_backoff_s < 0 or self.jobs_retention_s <= 0:
            raise SettingsError("jobs_workers must be >= 0; jobs_batch, jobs_max_claims, jobs_webhook_attempts >= 1; "
                                "jobs_lease_s, jobs_retention_s > 0; jobs_webhook_backoff_s >= 0")

    @property
    def jobs_db_url(self) -> str:
        return self.jobs_db or f"sqlite:///{Path(self.state_dir) / 'jobs.sqlite'}"

    @property
    def jobs_spool_url(self) -> str:
        return self.jobs_spool or str(Path(self.state_dir) / "spool")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> "Settings":
        """Defaults, then GENGUARD_GATEWAY_<FIELD> variables, then the overrides that are not None."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw not in (None, ""):
                kind = type(getattr(cls, f.name)) if getattr(cls, f.name) is not None else str
                try:
                    values[f.name] = _flag(raw) if kind is bool else kind(raw)
                except ValueError as exc:
                    raise SettingsError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _flag(raw: str) -> bool:
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_keys(path: str | os.PathLike) -> list[str]:
    """API keys from a file (or a mounted Secret): one per line, blank lines and # comments ignored."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read the API keys file {path}: {exc.strerror or exc}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise SettingsError(f"the API keys file {path} holds no key: one key per line")
    short = [k for k in keys if len(k) < 16]
    if short:
        raise SettingsError(f"the API keys file {path} has {len(short)} key(s) shorter than 16 characters: "
                            "use long random keys (e.g. `openssl rand -hex 32`)")
    return keys
