"""One typed settings object for every streaming role.

Precedence: explicit overrides (command-line flags) > ``AFFECTSTREAM_<FIELD>`` environment variables > defaults.
Secrets live here too, so ``redacted()`` is what logs and the demo print.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from affectstream.streaming.worker.redis_keys import RedisKeys

ENV_PREFIX = "AFFECTSTREAM_"
SECRET_FIELDS = frozenset({"kafka_sasl_password", "redis_password", "web_auth_token"})


@dataclass
class Settings:
    # services; "" means "start the embedded one" (demo and tests only)
    broker_url: str = "kafka://127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    app_id: str = "affectstream"

    # topics (docs/contracts.md)
    topic_posts: str = "posts"
    topic_enriched: str = "posts-enriched"
    topic_sentiment: str = "sentiment"
    topic_dlq: str = "posts-dlq"
    topic_alerts: str = "sentiment-alerts"
    topic_feedback: str = "feedback"            # analysts' corrections (key: post id)
    topic_shadow: str = "sentiment-shadow"      # a candidate model's results on shadowed posts (never counted)
    partitions: int = 4
    fetch_max_wait_ms: int = 50                 # how long the broker may hold an empty fetch (worker/app.py)
    producer_linger_ms: float = 2.0             # how long a worker's producer gathers records into one request
    replication_factor: int = 1

    # classify agent
    model_dir: str = "models/default"
    batch_max: int = 32
    batch_window_s: float = 0.05
    top_k: int = 0                      # 0: use the model's own K
    device: str = "auto"                # auto | cpu | cuda
    threads: int = 0                    # 0: torch default / ONNX: one lane per available core
    onnx_lanes: int = 0                 # ONNX backends: chunks of a micro-batch run at once (0: threads or cores; 1: off)
    gc_freeze: bool = True              # freeze the start-up heap once a stage has started (worker/heap.py)
    inference_backend: str = "auto"     # auto | torch | onnx-fp32 | onnx-int8 (model.serving: int8 only behind its gate)
    model_registry: str = ""            # versioned model registry root (model.registry); "" = serve model_dir only
    # automatic rollback of a candidate in shadow or canary (streaming/worker/rollout.py)
    rollback_min_calls: int = 50                     # candidate predict calls before its error rate is judged
    rollback_max_error_rate: float = 0.05            # share of candidate predict calls that raised
    rollback_min_posts: int = 200                    # candidate-scored posts before DLQ rate / disagreement are judged
    rollback_max_dlq_rate: float = 0.02              # canary posts the candidate could not classify
    rollback_max_disagreement: float = 0.5           # shadowed posts whose label differs from the deployed model's
    rollback_min_corrections: int = 20               # corrected posts scored by the candidate before judging
    rollback_max_analyst_disagreement: float = 0.5   # of those, share where it differs from the analyst
    sinks: str = "redis,topic"          # where results go: built-in names and/or package.module:ClassName (sinks/)

    # brand-level sentiment
    brands_file: str = ""               # tracked brands (JSON or YAML, see docs/brands.md); "" = no mention detection
    max_mentions_per_post: int = 100    # mentions kept per post; the overflow is counted on the post
    max_targets_per_post: int = 16      # (post, brand) targets classified per post; the overflow is on the result
    untargeted_brand: str = ""          # bucket for posts with no tracked brand ("" = only the all-brands count)

    # caption agent
    captioner: str = "offline"          # offline | none | vlm:<id or path>
    captioner_trust_remote_code: bool = False  # vlm: run a hub repository's own code (e.g. Florence-2 remote code)
    captioner_mismatch: str = "warn"    # a post described by another captioner than the model's: warn | reject (DLQ)
    caption_batch_max: int = 16
    caption_batch_window_s: float = 0.1
    caption_timeout_s: float = 30.0
    caption_batch_max_pixels: int = 64_000_000  # decoded pixels one caption batch may hold at once

    # input limits
    max_text_chars: int = 20_000
    max_id_chars: int = 256
    max_message_bytes: int = 16 * 1024 * 1024
    image_max_bytes: int = 10 * 1024 * 1024
    image_max_pixels: int = 40_000_000
    fetch_timeout_s: float = 5.0
    allow_private_urls: bool = False    # SSRF guard; only for trusted test setups
    image_root: str = ""                # "" disables {"path": ...} images

    # Redis keys and TTLs
    redis_prefix: str = "as:"
    result_ttl_s: int = 7 * 24 * 3600
    seen_ttl_s: int = 7 * 24 * 3600
    bucket_ttl_s: int = 2 * 24 * 3600
    caption_ttl_s: int = 30 * 24 * 3600

    # security (passed through to the clients, never logged)
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str = ""               # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""
    redis_password: str = ""
    redis_cluster: bool = False         # redis_url names a node of a Redis Cluster (redis-py's cluster client)
    redis_tls: bool = False

    # group membership: short values make tests and the demo start fast
    session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 1.0

    # worker web server (dashboard, JSON API, live events, metrics)
    web_port: int = 6066
    web_enabled: bool = True
    web_bind: str = "127.0.0.1"          # interface the web server listens on; compose opens it for the monitor only
    web_auth_token: str = ""             # bearer token for the dashboard and API; required when bound off loopback

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> "Settings":
        """Defaults, then environment, then non-None overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        for name, value in (overrides or {}).items():
            if value is not None:
                if name not in {f.name for f in fields(cls)}:
                    raise ValueError(f"unknown setting {name!r}")
                values[name] = value
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out[name]:
                out[name] = "***"
        out["redis_url"] = _redact_url(self.redis_url)
        out["broker_url"] = _redact_url(self.broker_url)
        return out

    @property
    def keys(self) -> RedisKeys:
        """The Redis key schema under the configured prefix: ``settings.keys.post(id)`` -> "as:post:<id>"."""
        return RedisKeys(self.redis_prefix)


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "bool":
            if raw.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.strip().lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: expected {kind}, got {raw!r}") from None


def _redact_url(url: str) -> str:
    # redis://user:secret@host -> redis://user:***@host
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0] if ":" in creds else ""
    return f"{scheme}://{user}:***@{host}"
