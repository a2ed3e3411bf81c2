"""One typed settings object for every streaming role, in groups a person can read (docs/settings.md).

Code reads a group's field: ``settings.kafka.brokers``, ``settings.classify.micro_batch_max``. Outside the
code every setting keeps one flat name, ``AFFECTSTREAM_<NAME>`` in the environment, ``--set name=value`` on
the command line, and the same ``name`` in ``Settings.load(overrides)`` and ``settings.replace(name=...)``:
``classify.micro_batch_max`` is ``batch_max``, ``AFFECTSTREAM_BATCH_MAX``. Each field carries its flat name
and a one-line meaning in its metadata, which is where ``affectstream settings`` and docs/settings.md read them.

Precedence: explicit overrides (command-line flags) > environment variables > defaults.
Secrets live here too, so ``redacted()`` is what logs and the demo print.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from affectstream.streaming.worker.redis_keys import RedisKeys

ENV_PREFIX = "AFFECTSTREAM_"
SECRET_WORDS = ("password", "secret", "token")  # a setting whose name holds one of these is never printed
MASK = "***"


def setting(name: str, default: Any, doc: str) -> Any:
    """A field known outside the code as ``name`` (``AFFECTSTREAM_<NAME>``, ``--set name=``), meaning ``doc``."""
    return field(default=default, metadata={"name": name, "doc": doc})


@dataclass(frozen=True)
class KafkaSettings:
    """The broker, the contract topics (docs/contracts.md: Topics), the consumer group and its clients."""
    brokers: str = setting("broker_url", "kafka://127.0.0.1:9092",
                           "Kafka bootstrap servers (several: comma-separated); '' starts an embedded broker "
                           "(demo and tests only).")
    app_id: str = setting("app_id", "affectstream", "Faust app id = consumer group of the processing workers.")
    topic_posts: str = setting("topic_posts", "posts", "Raw posts in.")
    topic_enriched: str = setting("topic_enriched", "posts-enriched", "Posts with their image described.")
    topic_sentiment: str = setting("topic_sentiment", "sentiment", "Results out.")
    topic_dlq: str = setting("topic_dlq", "posts-dlq", "Rejected inputs, each with a reason.")
    topic_alerts: str = setting("topic_alerts", "sentiment-alerts", "Sentiment-shift alerts.")
    topic_feedback: str = setting("topic_feedback", "feedback", "Analysts' corrections (key: post id).")
    topic_shadow: str = setting("topic_shadow", "sentiment-shadow",
                                "A candidate model's results on shadowed posts (never counted).")
    partitions: int = setting("partitions", 4, "Partitions of the topics this program creates.")
    replication_factor: int = setting("replication_factor", 1, "Replicas of the topics this program creates.")
    fetch_max_wait_ms: int = setting("fetch_max_wait_ms", 50,
                                     "How long the broker may hold an empty fetch (see FETCH_MAX_WAIT_MS in "
                                     "streaming/worker/app.py).")
    producer_linger_ms: float = setting("producer_linger_ms", 2.0,
                                        "How long a worker's producer gathers records into one request.")
    session_timeout_s: float = setting("session_timeout_s", 6.0,
                                       "Group membership timeout; short values make tests and the demo start fast.")
    heartbeat_interval_s: float = setting("heartbeat_interval_s", 1.0, "Group heartbeat interval.")
    security_protocol: str = setting("kafka_security_protocol", "PLAINTEXT",
                                     "PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL.")
    sasl_mechanism: str = setting("kafka_sasl_mechanism", "", "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512.")
    sasl_username: str = setting("kafka_sasl_username", "", "SASL user name.")
    sasl_password: str = setting("kafka_sasl_password", "", "SASL password (secret: never printed).")
    ssl_cafile: str = setting("kafka_ssl_cafile", "", "CA bundle for TLS to the broker ('' = system CAs).")


@dataclass(frozen=True)
class RedisSettings:
    """Where results, counts and captions live, under which key prefix, and for how long (docs/contracts.md)."""
    url: str = setting("redis_url", "redis://127.0.0.1:6379/0",
                       "Redis URL; '' starts an embedded Redis (demo and tests only).")
    password: str = setting("redis_password", "", "Redis password (secret: never printed).")
    cluster: bool = setting("redis_cluster", False, "The URL names a node of a Redis Cluster (redis-py's cluster "
                                                     "client).")
    tls: bool = setting("redis_tls", False, "TLS to Redis even for a redis:// URL.")
    prefix: str = setting("redis_prefix", "as:", "Prefix of every Redis key.")
    result_ttl_s: int = setting("result_ttl_s", 7 * 24 * 3600, "How long a post's result is kept.")
    seen_ttl_s: int = setting("seen_ttl_s", 7 * 24 * 3600, "How long a post id is remembered as counted.")
    bucket_ttl_s: int = setting("bucket_ttl_s", 2 * 24 * 3600, "How long a per-minute brand bucket is kept.")
    caption_ttl_s: int = setting("caption_ttl_s", 30 * 24 * 3600, "How long an image's cached caption is kept.")


@dataclass(frozen=True)
class WebSettings:
    """The worker web server: dashboard, JSON API, live events, /metrics (docs/operations-and-alerts.md)."""
    enabled: bool = setting("web_enabled", True,
                            "Serve the web pages; `affectstream worker` turns it on for --role monitor only.")
    port: int = setting("web_port", 6066, "Web server port.")
    bind: str = setting("web_bind", "127.0.0.1",
                        "Interface the web server listens on; off loopback it needs an auth token.")
    auth_token: str = setting("web_auth_token", "",
                              "Bearer token for the dashboard and API (secret: never printed).")


@dataclass(frozen=True)
class CaptionSettings:
    """The caption stage: which captioner describes images, and its micro-batches."""
    captioner: str = setting("captioner", "offline", "offline | none | vlm:<id or path>.")
    trust_remote_code: bool = setting("captioner_trust_remote_code", False,
                                      "vlm: run a hub repository's own code (e.g. Florence-2 remote code).")
    micro_batch_max: int = setting("caption_batch_max", 16,
                                   "Micro-batch: the most posts the caption stage takes from the stream at once.")
    micro_batch_window_s: float = setting("caption_batch_window_s", 0.1,
                                          "Micro-batch: the longest the caption stage waits to fill one.")
    timeout_s: float = setting("caption_timeout_s", 30.0, "Give up describing a micro-batch's images after this.")
    max_decoded_pixels: int = setting("caption_batch_max_pixels", 64_000_000,
                                      "Decoded pixels one caption sub-batch may hold in memory at once.")


@dataclass(frozen=True)
class ClassifySettings:
    """The classify stage: which model it serves, how, its micro-batches, and where results go."""
    model_dir: str = setting("model_dir", "models/default", "Deployed model directory (models/<version>).")
    model_registry: str = setting("model_registry", "",
                                  "Versioned model registry root; '' serves model_dir only "
                                  "(docs/feedback-and-versions.md).")
    inference_backend: str = setting("inference_backend", "auto",
                                     "auto | torch | onnx-fp32 | onnx-int8 (int8 only behind its accuracy gate).")
    micro_batch_max: int = setting("batch_max", 32,
                                   "Micro-batch: the most posts the classify stage takes from the stream at once.")
    micro_batch_window_s: float = setting("batch_window_s", 0.05,
                                          "Micro-batch: the longest the classify stage waits to fill one.")
    top_k: int = setting("top_k", 0, "Rationale tokens per post; 0 uses the model's own K.")
    onnx_lanes: int = setting("onnx_lanes", 0,
                              "ONNX backends: chunks of a micro-batch run at once (0: threads or cores; 1: off).")
    captioner_mismatch: str = setting("captioner_mismatch", "warn",
                                      "A post described by another captioner than the model's: warn | reject "
                                      "(DLQ).")
    sinks: str = setting("sinks", "redis,topic",
                         "Where results go: built-in names and/or package.module:ClassName.")


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker process runs its models on, whatever its role."""
    device: str = setting("device", "auto", "Where the models run: auto | cpu | cuda.")
    threads: int = setting("threads", 0, "Torch intra-op threads (0: torch default; ONNX: one lane per core).")
    gc_freeze: bool = setting("gc_freeze", True,
                              "Freeze the start-up heap once a stage has started (streaming/worker/heap.py).")


@dataclass(frozen=True)
class RolloutSettings:
    """When a candidate model in shadow or canary is rolled back (streaming/worker/rollout.py)."""
    min_calls: int = setting("rollback_min_calls", 50, "Candidate predict calls before its error rate is judged.")
    max_error_rate: float = setting("rollback_max_error_rate", 0.05, "Share of candidate predict calls that raised.")
    min_posts: int = setting("rollback_min_posts", 200,
                             "Candidate-scored posts before DLQ rate and disagreement are judged.")
    max_dlq_rate: float = setting("rollback_max_dlq_rate", 0.02, "Canary posts the candidate could not classify.")
    max_disagreement: float = setting("rollback_max_disagreement", 0.5,
                                      "Shadowed posts whose label differs from the deployed model's.")
    min_corrections: int = setting("rollback_min_corrections", 20,
                                   "Corrected posts scored by the candidate before judging against analysts.")
    max_analyst_disagreement: float = setting("rollback_max_analyst_disagreement", 0.5,
                                              "Of those, the share where the candidate differs from the analyst.")


@dataclass(frozen=True)
class BrandSettings:
    """Brand-level sentiment (docs/brands.md)."""
    file: str = setting("brands_file", "", "Tracked brands (JSON or YAML); '' = no mention detection.")
    max_mentions_per_post: int = setting("max_mentions_per_post", 100,
                                         "Mentions kept per post; the overflow is counted on the post.")
    max_targets_per_post: int = setting("max_targets_per_post", 16,
                                        "(post, brand) targets classified per post; the overflow is on the result.")
    untargeted: str = setting("untargeted_brand", "",
                              "Bucket for posts with no tracked brand ('' = only the all-brands count).")


@dataclass(frozen=True)
class LimitSettings:
    """What an input may be (docs/contracts.md): past these, a post goes to the DLQ with a reason."""
    max_message_bytes: int = setting("max_message_bytes", 16 * 1024 * 1024,
                                     "Largest message read or written (also the Kafka request and fetch size).")
    max_text_chars: int = setting("max_text_chars", 20_000, "Longest post text.")
    max_id_chars: int = setting("max_id_chars", 256, "Longest post id.")
    image_max_bytes: int = setting("image_max_bytes", 10 * 1024 * 1024, "Largest image file.")
    image_max_pixels: int = setting("image_max_pixels", 40_000_000, "Largest decoded image (decompression bombs).")
    fetch_timeout_s: float = setting("fetch_timeout_s", 5.0, "Image URL fetch timeout.")
    allow_private_urls: bool = setting("allow_private_urls", False,
                                       "Fetch image URLs on private addresses (SSRF guard off: trusted test setups "
                                       "only).")
    image_root: str = setting("image_root", "", "Folder {\"path\": ...} images may come from; '' disables them.")


@dataclass(frozen=True)
class DriverSettings:
    """Driver terms: rationale words counted per brand, label and minute, rolled up into hours (docs/drivers.md)."""
    labels: str = setting("driver_labels", "negative,neutral,positive",
                          "Labels whose posts' rationale terms are counted, comma-separated ('' = none).")
    terms_per_bucket: int = setting("driver_terms_per_bucket", 100,
                                    "Distinct terms a (brand, label, minute) bucket keeps; later new ones count "
                                    "as 'other'.")
    terms_per_hour: int = setting("driver_terms_per_hour", 120,
                                  "Terms an hour bucket keeps (the most frequent; the rest count as 'other'; "
                                  "up to 127 stays in Redis's compact hash encoding).")
    hour_ttl_s: int = setting("driver_hour_ttl_s", 15 * 24 * 3600,
                              "How long an hour bucket is kept (a 7-day window and its 7-day baseline).")


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    web: WebSettings = field(default_factory=WebSettings)
    caption: CaptionSettings = field(default_factory=CaptionSettings)
    classify: ClassifySettings = field(default_factory=ClassifySettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    brands: BrandSettings = field(default_factory=BrandSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    drivers: DriverSettings = field(default_factory=DriverSettings)

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> "Settings":
        """Defaults, then environment, then non-None overrides (keyed by flat name)."""
        env = os.environ if env is None else env
        values = {name: _coerce(f, env[env_name(name)]) for name, f in SETTING_FIELDS.items() if env_name(name) in env}
        values.update({name: value for name, value in (overrides or {}).items() if value is not None})
        return cls().replace(**values)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with the settings named (flat names: ``replace(batch_max=8, redis_url="")``) changed."""
        by_group: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if name not in SETTING_PATHS:
                raise ValueError(f"unknown setting {name!r}")
            group, attr = SETTING_PATHS[name]
            by_group.setdefault(group, {})[attr] = value
        return dataclasses.replace(self, **{group: dataclasses.replace(getattr(self, group), **values)
                                            for group, values in by_group.items()})

    def value(self, name: str) -> Any:
        """The setting with flat name ``name``: ``value("batch_max") == classify.micro_batch_max``."""
        group, attr = SETTING_PATHS[name]
        return getattr(getattr(self, group), attr)

    def by_name(self) -> dict[str, Any]:
        """Flat name -> value, for every setting (what the environment would carry)."""
        return {name: self.value(name) for name in SETTING_PATHS}

    def redacted(self) -> dict[str, Any]:
        """``by_name()`` with secrets masked: safe to log or print."""
        return {name: redact(name, value) for name, value in self.by_name().items()}

    @property
    def keys(self) -> RedisKeys:
        """The Redis key schema under the configured prefix: ``settings.keys.post(id)`` -> "as:post:<id>"."""
        return RedisKeys(self.redis.prefix)


def _index() -> tuple[dict[str, tuple[str, str]], dict[str, dataclasses.Field]]:
    paths: dict[str, tuple[str, str]] = {}
    by_name: dict[str, dataclasses.Field] = {}
    for group in fields(Settings):
        for f in fields(group.default_factory):  # type: ignore[arg-type]
            name = f.metadata["name"]
            if name in paths:
                raise TypeError(f"setting {name!r} is declared twice")
            paths[name], by_name[name] = (group.name, f.name), f
    return paths, by_name


SETTING_PATHS, SETTING_FIELDS = _index()  # flat name -> (group, field); flat name -> dataclass field


def env_name(name: str) -> str:
    """``batch_max`` -> ``AFFECTSTREAM_BATCH_MAX``."""
    return ENV_PREFIX + name.upper()


def is_secret(name: str) -> bool:
    return any(word in name for word in SECRET_WORDS)


def redact(name: str, value: Any) -> Any:
    """The value as it may be shown: secrets masked, and any URL's password masked."""
    if is_secret(name):
        return MASK if value else value
    return _redact_url(value) if isinstance(value, str) else value


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
        raise ValueError(f"{env_name(f.metadata['name'])}: expected {kind}, got {raw!r}") from None


def _redact_url(url: str) -> str:
    # redis://user:secret@host -> redis://user:***@host; several comma-separated URLs each
    if "@" not in url or "://" not in url:
        return url
    return ",".join(_redact_one_url(part) for part in url.split(","))


def _redact_one_url(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0] if ":" in creds else ""
    return f"{scheme}://{user}:{MASK}@{host}"
