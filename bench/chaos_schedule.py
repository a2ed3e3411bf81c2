"""The chaos run's fault schedule: a pure, seeded function of (seed, horizon, workers).

A schedule is a list of :class:`Fault` ``(t, action, target, duration)``, sorted by ``t`` (seconds from the
start of the run). The same seed gives the same schedule, so a failing chaos run is replayed by its seed.

    kill_worker     SIGKILL the worker in slot ``target`` ("caption-0" …); restart it ``duration`` s later
    stop_redis      stop redis-server; start it again on the same port and data dir ``duration`` s later
    freeze_broker   SIGSTOP the broker; SIGCONT ``duration`` s later
    slow_captioner  the captioner answers slowly (seconds per call, some past the caption timeout)
    fail_captioner  the captioner raises on every call

Every kind occurs at least once: the first faults are one of each (and one kill per role: worker slots
are named "<role>-<n>"), in a seeded order, spread over the first part of the horizon; after that kinds
are drawn at random (kills weighted up).
Faults on the same target never overlap (a dead worker is not killed again, a stopped Redis not stopped
again); faults on different targets may (Redis down while the broker is frozen is part of the test).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

ACTIONS = ("kill_worker", "stop_redis", "freeze_broker", "slow_captioner", "fail_captioner")
WEIGHTS = (3, 1, 1, 1, 1)                 # random phase: kills are the most common fault
MIN_OUTAGE_S = 2.0
RESTART_DELAY_S = (0.5, 5.0)              # a killed worker comes back after this long
CAPTIONER_FAULT_S = (3.0, 15.0)           # how long the captioner stays slow or failing
SETTLE_S = 1.0                            # at least this long between two faults on one target


@dataclass(frozen=True)
class Fault:
    t: float          # seconds from the start of the run
    action: str       # one of ACTIONS
    target: str       # a worker slot, "redis", "broker" or "captioner"
    duration: float   # seconds until the fault is undone (restart, SIGCONT, captioner back to normal)

    @property
    def end(self) -> float:
        return self.t + self.duration


def chaos_schedule(seed: int, horizon_s: float, workers: tuple[str, ...] | list[str], *,
                   mean_gap_s: float = 6.0, max_outage_s: float = 10.0) -> list[Fault]:
    """Faults starting in ``[0, horizon_s)``, every kind at least once. On a horizon under a minute the
    coverage phase may run past it (its two captioner faults cannot overlap)."""
    if not workers:
        raise ValueError("a chaos schedule needs at least one worker slot")
    if horizon_s <= 0 or mean_gap_s <= 0 or max_outage_s < MIN_OUTAGE_S:
        raise ValueError("horizon_s and mean_gap_s must be positive, max_outage_s at least "
                         f"{MIN_OUTAGE_S} s")
    rng = random.Random(seed)
    workers = sorted(workers)
    free_at: dict[str, float] = {}
    faults: list[Fault] = []

    def add(t: float, action: str, role: str | None = None, before: float | None = None) -> None:
        target, duration = _target_and_duration(rng, action, workers, max_outage_s)
        if action == "kill_worker":  # a worker slot (of ``role``) that is up, if there is one
            slots = [w for w in workers if role is None or w.rsplit("-", 1)[0] == role]
            up = [w for w in slots if free_at.get(w, 0.0) <= t]
            target = rng.choice(up) if up else min(slots, key=lambda w: free_at.get(w, 0.0))
        start = max(t, free_at.get(target, 0.0))
        if before is not None and start >= before:
            return
        faults.append(Fault(round(start, 2), action, target, round(duration, 2)))
        free_at[target] = start + duration + SETTLE_S

    # coverage phase: one fault of each kind in a seeded order, in the first half of the horizon
    roles = sorted({w.rsplit("-", 1)[0] for w in workers})
    kinds = [(a, None) for a in ACTIONS if a != "kill_worker"] + [("kill_worker", r) for r in roles]
    rng.shuffle(kinds)
    cover_s = min(horizon_s / 2, len(kinds) * mean_gap_s)
    slot = cover_s / len(kinds)
    for i, (action, role) in enumerate(kinds):
        add((i + rng.uniform(0.2, 0.8)) * slot, action, role)
    # random phase
    t = cover_s + rng.expovariate(1 / mean_gap_s)
    while t < horizon_s:
        add(t, rng.choices(ACTIONS, weights=WEIGHTS)[0], before=horizon_s)
        t += rng.expovariate(1 / mean_gap_s)
    return sorted(faults, key=lambda f: (f.t, f.action, f.target))


def _target_and_duration(rng: random.Random, action: str, workers: list[str],
                         max_outage_s: float) -> tuple[str, float]:
    if action == "kill_worker":
        return workers[0], rng.uniform(*RESTART_DELAY_S)
    if action == "stop_redis":
        return "redis", rng.uniform(MIN_OUTAGE_S, max_outage_s)
    if action == "freeze_broker":
        return "broker", rng.uniform(MIN_OUTAGE_S, max_outage_s)
    if action in ("slow_captioner", "fail_captioner"):
        return "captioner", rng.uniform(*CAPTIONER_FAULT_S)
    raise ValueError(f"unknown chaos action {action!r}")


def timeline(faults: list[Fault]) -> list[tuple[float, str, Fault]]:
    """Each fault as two edges, ("begin", at t) and ("end", at t + duration), in time order; at equal
    times an end comes before a begin, so a target is healed before it is broken again."""
    edges = [(f.t, "begin", f) for f in faults] + [(f.end, "end", f) for f in faults]
    return sorted(edges, key=lambda e: (e[0], e[1] != "end"))


def describe(faults: list[Fault]) -> str:
    """One line per fault, for logs and reports."""
    return "\n".join(f"{f.t:7.2f}s  {f.action:<15} {f.target:<10} {f.duration:5.2f}s" for f in faults)
