"""From analysts' corrections to a better deployed model, on the real broker and redis-server.

First the piece the retraining job stands on: the Redis sink keeps each post's input (``post_input``: text,
description, brands, and the label and version that answered) beside its first result, and the text never
reaches the ``sentiment`` topic. Then the loop end to end (``test_corrections_retrain_shadow_promote``).
"""
from __future__ import annotations

import asyncio

import orjson

from affectstream.streaming.worker.sinks.redis import RedisSink
from affectstream.streaming.worker.stage import run_stage
from tests.servers import settings_for
from tests.test_shadow import posts, registry_with, stage_for, words_label
from tests.test_sinks import _Stream


def test_each_posts_input_is_stored_once_beside_its_first_result(redis_server, tmp_path):
    settings = settings_for(redis=redis_server, captioner="none")
    first_registry = registry_with(tmp_path / "a", "words", None)
    second_registry = registry_with(tmp_path / "b", "negative", None)
    batch = posts(8, prefix="in")
    enriched = orjson.loads(batch[3]) | {"caption": "objects: coffee mug.", "captioner": None}
    batch[3] = orjson.dumps({k: v for k, v in enriched.items() if v is not None})

    async def run():
        sink = RedisSink(settings)
        sent: list = []

        async def send(records):
            sent.append(records)

        for registry in (first_registry, second_registry):  # the second: a redelivery, answered by another model
            stage = stage_for(settings, registry)
            await stage.start()
            await run_stage(_Stream([batch]), stage, [sink], send, batch_max=64, within=0.01)
            await stage.aclose()
        keys = settings.keys
        inputs = {orjson.loads(p)["id"]: await sink.client.get(keys.post_input(orjson.loads(p)["id"])) for p in batch}
        ttls = [await sink.client.ttl(keys.post_input(i)) for i in inputs]
        results = {i: orjson.loads(await sink.client.get(keys.post(i))) for i in inputs}
        await sink.close()
        return inputs, ttls, results

    inputs, ttls, results = asyncio.run(run())
    for raw in batch:
        post = orjson.loads(raw)
        stored = orjson.loads(inputs[post["id"]])
        assert stored == {"text": post["text"], "caption": post.get("caption"), "brands": post["brands"],
                          "label": words_label(post["text"]), "model": "v1"}, "the first answer's input stands"
        assert results[post["id"]]["label"] == words_label(post["text"])
    assert all(settings.result_ttl_s - 60 < ttl <= settings.result_ttl_s for ttl in ttls)
    assert all("text" not in result for result in results.values()), "the Result carries no post text"
