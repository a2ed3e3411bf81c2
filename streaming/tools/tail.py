"""Print results from the ``sentiment`` topic (or the DLQ) as they arrive.

No consumer group: tailing never moves a worker's offsets and any number of tails can run.
"""
from __future__ import annotations

import base64
import sys
from typing import Iterable

import orjson
from rich.console import Console
from rich.text import Text

from affectstream.streaming.worker.kafka_config import bootstrap_servers, kafka_client_kwargs
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings

LABEL_STYLE = {"positive": "bold green", "negative": "bold red", "neutral": "bold yellow"}
SOURCE_STYLE = {"text": "cyan", "image": "magenta"}


def result_text(result: Result) -> Text:
    """One line: label, confidence, id, brands (each with the label toward it), rationale words coloured by
    source (text / image)."""
    score = result.scores.get(result.label)
    line = Text()
    line.append(f"{result.label:<8}", style=LABEL_STYLE.get(result.label, "bold"))
    line.append(f" {score:.2f} " if isinstance(score, (int, float)) else "  ?   ")
    line.append(f"{result.id[:24]:<24} ", style="dim")
    toward = result.bucket_labels()
    if result.brands:
        line.append("[", style="blue")
        for i, brand in enumerate(result.brands):
            line.append(("," if i else "") + brand, style="blue")
            if brand in toward and result.targets:
                line.append(f":{toward[brand]}", style=LABEL_STYLE.get(toward[brand], "bold"))
        line.append(f"{f' +{result.targets_overflow}' if result.targets_overflow else ''}] ", style="blue")
    for word in result.rationale:
        line.append(str(word.get("text", "")), style=SOURCE_STYLE.get(word.get("source"), ""))
        line.append(" ")
    if result.image_error:
        line.append(f"(image_error: {result.image_error})", style="dim red")
    return line


def dlq_text(record: dict) -> Text:
    line = Text()
    line.append("DLQ     ", style="bold red")
    line.append(f"{record.get('stage', '?')}/{record.get('reason', '?')} ", style="red")
    line.append(str(record.get("post_id") or "-"), style="dim")
    raw = base64.b64decode(record.get("raw_b64", ""))[:60]
    line.append(f"  {raw!r}", style="dim")
    return line


def topic_consumer(settings: Settings, topics: Iterable[str], *, from_beginning: bool,
                   client_id: str = "affectstream-tail"):
    """A kafka-python consumer of every partition of ``topics``, without a consumer group (it never moves
    a worker's offsets), at the oldest retained record or at the end."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers(settings), group_id=None,
                             enable_auto_commit=False, client_id=client_id, **kafka_client_kwargs(settings))
    tps = [TopicPartition(topic, p) for topic in topics
           for p in sorted(consumer.partitions_for_topic(topic) or {0})]  # not created yet: partition 0
    consumer.assign(tps)
    if from_beginning:
        consumer.seek_to_beginning(*tps)
    else:
        consumer.seek_to_end(*tps)  # NB: Tansu's end offsets can be early: a few older records may show
    return consumer


def tail(settings: Settings, *, from_beginning: bool = False, as_json: bool = False, limit: int = 0,
         dlq: bool = False) -> int:
    topic = settings.kafka.topic_dlq if dlq else settings.kafka.topic_sentiment
    console = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    consumer = topic_consumer(settings, [topic], from_beginning=from_beginning)
    seen = 0
    try:
        while not limit or seen < limit:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    seen += 1
                    if as_json:
                        sys.stdout.write(record.value.decode("utf-8", "replace") + "\n")
                        sys.stdout.flush()
                    else:
                        console.print(dlq_text(orjson.loads(record.value)) if dlq
                                      else result_text(Result.from_json(record.value)))
                    if limit and seen >= limit:
                        break
    except KeyboardInterrupt:
        return seen  # Ctrl-C is how tail normally ends
    finally:
        consumer.close()
    return seen
