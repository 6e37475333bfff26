"""Metric logging: JSON lines + TensorBoard event files, and a console progress bar."""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import numpy as np
import tqdm

from avrep.runs import METRICS_FILE


def _drop_rows_after(path: str, step: int) -> None:
    """Keeps the rows of steps <= ``step`` (the one resumed from): the steps a killed run logged after its last
    checkpoint run again, and each step appears once."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if line.strip() and _row_step(line) <= step]
    if len(kept) != len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


def _row_step(line: str) -> float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a row cut short by a kill
        return float("inf")


class MetricLogger:
    """Writes ``metrics.jsonl`` and TensorBoard events in a run's workdir (process 0 only)."""

    def __init__(
        self, workdir: str, total_steps: int, initial_step: int, enabled: bool = True, description: str = "train"
    ):
        self.enabled = enabled
        self._jsonl = self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, METRICS_FILE)
            _drop_rows_after(path, initial_step)
            self._jsonl = open(path, "a")
            from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes events

            # purge_step: TensorBoard discards the events a killed run wrote after the step it resumes from.
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=initial_step + 1)
        self._bar = tqdm.tqdm(
            total=total_steps,
            initial=initial_step,
            desc=description,
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=2.0,
        )
        self._last = (time.perf_counter(), initial_step)
        self._input_wait = 0.0  # seconds spent waiting for batches since the last train row

    def waited_for_input(self, seconds: float) -> None:
        self._input_wait += seconds

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        now, (then, then_step) = time.perf_counter(), self._last
        record = {f"{prefix}/{k}": float(np.asarray(v)) for k, v in metrics.items()}
        if prefix == "train" and step > then_step:
            record["train/steps_per_second"] = (step - then_step) / max(now - then, 1e-9)
            # The fraction of wall time the host waited for the input pipeline: near 0 when the device is the
            # bottleneck (the next batch is ready while the previous step runs), near 1 when input starves it.
            record["train/input_wait"] = min(self._input_wait / max(now - then, 1e-9), 1.0)
            self._last, self._input_wait = (now, step), 0.0
        self._jsonl.write(json.dumps({"step": step, **record}) + "\n")
        self._jsonl.flush()
        for k, v in record.items():
            self._tb.add_scalar(k, v, step)
        loss = record.get(f"{prefix}/loss")
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def advance(self, steps: int = 1) -> None:
        self._bar.update(steps)

    def close(self) -> None:
        self._bar.close()
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
