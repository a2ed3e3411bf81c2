"""The one way this project runs Lua scripts: ``script = client.register_script(lua)`` once per client, then
``await script(keys=..., args=...)`` (redis-py sends EVALSHA and, when the server answers NOSCRIPT, loads the
script and runs it again), or many calls in one pipeline with ``run_pipelined``.

``run_pipelined`` queues plain EVALSHA calls. (Passing the pipeline to the script object would make redis-py's
single-Redis pipeline ask SCRIPT EXISTS first, one more round trip for every pipeline, although the scripts
are nearly always there.) After a server restarted or its scripts were flushed a call comes back NOSCRIPT;
such a call did not run, so ``run_pipelined`` runs it again on its own through the script object, which
loads the script on that call's server (on a cluster, that call's master) and runs it.
"""
from __future__ import annotations

from typing import Any, Sequence

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]   # (script, keys, args)


async def run_pipelined(client: Any, calls: Sequence[ScriptCall]) -> list[Any]:
    """One non-transactional pipeline of script calls; per call its reply or the error Redis answered
    (``ResponseError``: the caller decides). Being unreachable raises."""
    if not calls:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies = await pipe.execute(raise_on_error=False)
    return [await _alone(call) if isinstance(reply, NoScriptError) else reply
            for call, reply in zip(calls, replies)]


async def _alone(call: ScriptCall) -> Any:
    script, keys, args = call
    try:
        return await script(keys=keys, args=args)
    except ResponseError as e:  # answered like the pipeline's other replies
        return e
