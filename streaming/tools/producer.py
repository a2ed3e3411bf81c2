"""Send posts to Kafka from a JSON-lines file (kafka-python producer).

The key is the post id whenever one can be read, so a post's enriched message and result land on the
same partition. Lines that are not valid posts are sent unchanged (as raw bytes): the caption stage
routes them to the dead-letter topic with a machine-readable reason, which is where a bad input should
be seen.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

from affectstream.streaming.worker.dlq import post_id_guess
from affectstream.streaming.worker.kafka_config import bootstrap_servers, kafka_client_kwargs
from affectstream.streaming.worker.settings import Settings


@dataclass
class ProduceStats:
    topic: str
    sent: int = 0
    without_key: int = 0
    seconds: float = 0.0


def read_lines(path: str) -> Iterator[bytes]:
    """Non-blank lines as bytes, without their line ending; '-' is stdin."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        for line in stream:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def make_producer(settings: Settings):
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap_servers(settings),
        client_id="affectstream-produce",
        acks="all",                      # at least once; no idempotence (Tansu rejects it)
        enable_idempotence=False,
        linger_ms=5,
        retries=5,
        max_request_size=settings.limits.max_message_bytes,
        **kafka_client_kwargs(settings),
    )


def produce_lines(settings: Settings, lines: Iterable[bytes], *, topic: str | None = None, rate: float = 0.0,
                  progress: bool = False, total: int | None = None, producer=None) -> ProduceStats:
    """Send every line (key = post id when readable); returns after the broker acknowledged them all."""
    topic = topic or settings.kafka.topic_posts
    stats = ProduceStats(topic=topic)
    own = producer is None
    producer = producer or make_producer(settings)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="post", desc=f"-> {topic}", file=sys.stderr)
    start = time.monotonic()
    futures = []
    try:
        for line in lines:
            post_id = post_id_guess(line)
            key = post_id.encode("utf-8") if post_id else None
            stats.without_key += key is None
            futures.append(producer.send(topic, key=key, value=line))
            stats.sent += 1
            if bar is not None:
                bar.update(1)
            if rate > 0:
                delay = start + stats.sent / rate - time.monotonic()
                if delay > 0:
                    producer.flush()
                    time.sleep(delay)
        producer.flush()
        for future in futures:
            future.get(timeout=30)  # raises if the broker refused a message
    finally:
        if bar is not None:
            bar.close()
        if own:
            producer.close()
    stats.seconds = time.monotonic() - start
    return stats


def produce_file(settings: Settings, path: str, *, topic: str | None = None, rate: float = 0.0,
                 progress: bool = True) -> ProduceStats:
    total = None
    if path != "-":
        with open(path, "rb") as f:
            total = sum(1 for line in f if line.strip())
    return produce_lines(settings, read_lines(path), topic=topic, rate=rate, progress=progress, total=total)
