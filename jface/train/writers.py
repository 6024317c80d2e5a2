"""Metric writers: console progress line, ``metrics.jsonl`` and TensorBoard (tensorboardX; TensorFlow not needed).

clu's writers import TensorFlow, which jface does not require, so this small module plays their role.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricWriter:
  """Writes scalars to ``workdir/metrics.jsonl`` and TensorBoard event files; prints a progress line."""

  def __init__(self, workdir: str, total_steps: int, tensorboard: bool = True, stream=None):
    os.makedirs(workdir, exist_ok=True)
    self.total_steps = total_steps
    self.stream = stream or sys.stdout
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # optional: console + jsonl still work
        self._tb = None
    self._t0 = None
    self._step0 = None

  def write_scalars(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
    rec = {"step": int(step), "prefix": prefix, "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(rec) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{prefix}/{k}", float(v), int(step))
      self._tb.flush()

  def progress(self, step: int, scalars: Mapping[str, float], images_per_step: int) -> str:
    """Prints ``step N/T | img/s | losses | ETA`` measured since the first call."""
    now = time.time()
    if self._t0 is None:
      self._t0, self._step0 = now, step
    done = step - self._step0
    rate = done / (now - self._t0) if done > 0 and now > self._t0 else float("nan")
    eta = (self.total_steps - step) / rate if rate == rate and rate > 0 else float("nan")
    parts = [f"step {step}/{self.total_steps}",
             f"{rate * images_per_step:.1f} img/s" if rate == rate else "-- img/s"]
    parts += [f"{k} {v:.4g}" for k, v in scalars.items()]
    parts.append(f"ETA {_fmt_duration(eta)}" if eta == eta else "ETA --")
    line = " | ".join(parts)
    print(line, file=self.stream, flush=True)
    return line

  def log(self, msg: str) -> None:
    print(msg, file=self.stream, flush=True)

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
