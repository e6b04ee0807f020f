"""How far a decode has got, reported as it goes.

A progress reporter is any callable ``(stage, done, total)``: ``stage`` one of
``STAGES``, ``done`` of ``total`` time bins (``writing``: 0 of 1, then 1 of 1). The
decoders call it after each chunk of time; within a stage ``done`` only grows.
``ProgressBars`` draws tqdm bars (the default in Python); ``LoggedProgress`` writes
lines to a log, such as a Dagster run's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from tqdm.auto import tqdm

STAGES = ("likelihood", "filter", "smoother", "writing")


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int) -> None: ...


class ProgressBars:
    """A tqdm bar per stage, closed when the stage is done."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None or done < bar.n:  # a new pass (an EM iteration) starts the stage again
            if bar is not None:
                bar.close()
            unit = "step" if stage == "writing" else "bin"
            bar = self.bars[stage] = tqdm(total=total, desc=stage.capitalize(), unit=unit, disable=self.disable)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


class LoggedProgress:
    """Lines such as "session.nwb, run1: filter 40% (10,400 of 26,000 time bins)": each
    stage when it starts and ends, and in between at most every ``every_s`` seconds."""

    def __init__(self, log: Callable[[str], None], what: str, every_s: float = 10.0, clock=time.monotonic):
        self.log, self.what, self.every_s, self.clock = log, what, every_s, clock
        self.last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        first = stage not in self.last
        if not (first or done >= total or now - self.last[stage] >= self.every_s):
            return
        self.last[stage] = now
        if stage == "writing":
            self.log(f"{self.what}: {'writing the results' if done < total else 'results written'}")
            return
        share = 100.0 * done / total if total else 100.0
        self.log(f"{self.what}: {stage} {share:.0f}% ({done:,} of {total:,} time bins)")
