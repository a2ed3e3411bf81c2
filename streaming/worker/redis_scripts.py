"""The one way this project runs Lua scripts: ``script = client.register_script(lua)`` once per client, then
``await script(keys=..., args=...)`` (redis-py sends EVALSHA and, when the server answers NOSCRIPT, loads the
script and runs it again), or many calls in one pipeline with ``run_pipelined``.

In a pipeline the call is ``script(keys, args, client=pipe)``. redis-py's single-Redis pipeline loads the
scripts it carries before it runs (SCRIPT EXISTS, then SCRIPT LOAD for the missing ones); its cluster pipeline
sends the EVALSHA as it is, so after a master restarted or its scripts were flushed a call can come back
NOSCRIPT. Such a call did not run, so ``run_pipelined`` runs it again on its own through the script object,
which loads the script on that call's master.
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
            await script(keys=keys, args=args, client=pipe)
        replies = await pipe.execute(raise_on_error=False)
    return [await _alone(call) if isinstance(reply, NoScriptError) else reply
            for call, reply in zip(calls, replies)]


async def _alone(call: ScriptCall) -> Any:
    script, keys, args = call
    try:
        return await script(keys=keys, args=args)
    except ResponseError as e:  # answered like the pipeline's other replies
        return e
