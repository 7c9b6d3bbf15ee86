"""A seeded schedule of process faults, and running it against a Pipeline.

    steps = make_schedule(random.Random(seed), pipeline.names(), duration=22.0)
    print(describe(steps))
    await run_schedule(pipeline, steps, deadline=30.0)   # the steps run, skipping late ones

Each step hits one process at `at` seconds from the start and holds the fault for `hold`
seconds:

    kill    SIGKILL, wait `hold`, start again (a new member name: its pending entries are
            reclaimed after --claim-idle)
    pause   SIGSTOP, wait `hold`, SIGCONT (connections, locks and claimed rows stay held)
    term    SIGTERM (must exit 0: in-flight batches finish), wait `hold`, start again

Steps on one process never overlap: the schedule spaces them `hold` + `RECOVERY` apart, and
`run_schedule` holds a step back until the previous one on its process has ended (its restart
listening). Steps on different processes may overlap. The same seed and names give the same
schedule.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tests.torture.pipeline import Pipeline

Action = Literal["kill", "pause", "term"]
ACTIONS: tuple[Action, ...] = ("kill", "kill", "pause", "term")
RECOVERY = 4.0
"""Seconds after a step's hold before its process may be hit again (restart and catch-up)."""


@dataclass(frozen=True)
class Step:
    at: float
    action: Action
    target: str
    hold: float

    def __str__(self) -> str:
        return f"{self.at:5.1f}s {self.action:<5} {self.target} for {self.hold:.1f}s"


def make_schedule(
    rng: random.Random,
    names: Sequence[str],
    duration: float,
    *,
    gap: tuple[float, float] = (0.8, 2.5),
    hold: tuple[float, float] = (0.3, 3.0),
    actions: Sequence[Action] = ACTIONS,
) -> list[Step]:
    """Steps from about 1 s to `duration` s, `gap` seconds apart, on random free processes."""
    free_at = dict.fromkeys(names, 0.0)
    steps: list[Step] = []
    t = rng.uniform(0.5, 1.5)
    while t < duration:
        action = rng.choice(list(actions))
        held = round(rng.uniform(*hold), 2)
        candidates = sorted(n for n, free in free_at.items() if free <= t)
        if candidates:
            target = rng.choice(candidates)
            steps.append(Step(round(t, 2), action, target, held))
            free_at[target] = t + held + RECOVERY
        t += rng.uniform(*gap)
    return steps


def describe(steps: Sequence[Step]) -> str:
    return "\n".join(str(s) for s in steps) or "(no steps)"


async def run_step(pipeline: Pipeline, step: Step) -> None:
    """Apply one step now and undo it after its hold."""
    if step.action == "pause":
        pipeline.pause(step.target)
        try:
            await asyncio.sleep(step.hold)
        finally:
            pipeline.resume(step.target)
        return
    if step.action == "kill":
        await pipeline.kill(step.target, signal.SIGKILL)
    else:
        await pipeline.terminate(step.target)
    await asyncio.sleep(step.hold)
    await pipeline.start([step.target])


async def run_schedule(
    pipeline: Pipeline, steps: Sequence[Step], *, deadline: float | None = None
) -> list[Step]:
    """Run every step at its time (from now), concurrently; return the steps run.

    A step on a process whose previous step has not ended (its restart still starting) waits
    for it; a step that could not begin by `deadline` seconds from now is skipped (a loaded
    machine starts processes slowly: this bounds the fault phase). The first failure is raised
    once all steps ended (each undoes its fault, so no process is left paused)."""
    loop = asyncio.get_running_loop()
    begin = loop.time()
    locks = {s.target: asyncio.Lock() for s in steps}
    done: list[Step] = []

    async def at(step: Step) -> None:
        await asyncio.sleep(max(0.0, begin + step.at - loop.time()))
        async with locks[step.target]:
            now = loop.time() - begin
            if deadline is not None and now > deadline:
                print(f"step {step} skipped: not begun by {deadline:.0f}s")
                return
            if now - step.at > 1:
                print(f"step {step} begins {now - step.at:.1f}s late: the previous one was slow")
            done.append(step)
            await run_step(pipeline, step)

    results = await asyncio.gather(*(at(s) for s in steps), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return sorted(done, key=lambda s: s.at)
