"""The topic sink: every result on the ``sentiment`` topic, ONE message per post (key: the post id, value:
the Result JSON with the per-brand ``targets`` inside; not one message per (post, brand), so a post's
brands stay together and a post's messages stay on one partition, in order), and ``send_all``, which the
stages also use for their forwards and dead letters."""
from __future__ import annotations

import asyncio
from typing import Any

import faust

from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.sinks import Sink, SinkItem

Record = tuple[bytes | None, bytes]  # (key, value) ready to send


async def send_all(app: faust.App, records: dict[str, list[Record]]) -> None:
    """Send every record to its contract topic (by role: "enriched", "sentiment", "dlq" …) and wait until
    the broker has acknowledged all of them."""
    topics = app.affect_topics  # type: ignore[attr-defined]
    futures = []
    for name, recs in records.items():
        for key, value in recs:
            futures.append(await topics[name].send(key=key, value=value, force=True))
    if futures:
        await asyncio.gather(*futures)


class TopicSink(Sink):
    """Returns once the broker has acknowledged every result of the batch."""

    def __init__(self, settings: Settings, app: Any = None):
        if app is None or not hasattr(app, "affect_topics"):
            raise ValueError("the topic sink sends through the worker's faust app (create_app)")
        super().__init__(settings, app)

    async def write(self, batch: list[SinkItem]) -> None:
        await send_all(self.app, {"sentiment": [(item.key, item.json) for item in batch]})
