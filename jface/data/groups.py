"""Grouped sources for multi-frame methods (PGN): K frames of one identity at contiguous indices.

A grouped source has an int ``group_size`` K: indices ``[g K, (g + 1) K)`` are the K frames of group g, all of
one identity, and ``jface.data.pipeline.Loader`` shuffles whole groups (batch index ``b K + j`` = frame j of the
batch's group b). Examples carry ``group``: the int identity index (several groups of one identity share it).

* ``GroupedSource`` (spec ``groups:K:SPEC``): a crops folder made from other images (``meta.npz``
  ``source_name``, e.g. by ``python -m jface.data.profiling``, whose outputs of one photo are the same face at
  several yaws). The examples of each origin, in meta order, are taken in chunks of K; an origin's last
  ``count % K`` examples are dropped, so origins with fewer than K examples give none. ``group`` = the origin's
  index among all origins of the folder (order of first appearance in the meta).
* ``ClipsSource`` (spec ``clips:DIR[:K]``, K default 2): real clips (300-VW / Multi-PIE style). ``DIR/<clip>/``
  holds frames ``*.jpg|*.jpeg|*.png`` (case-insensitive, not recursive), each with a 68-point iBUG ``.pts`` file
  of the same stem beside it (``read_pts``). Every clip is one identity; its frames, sorted by name (digit runs
  compared as numbers: ``f2`` < ``f10``), are taken in consecutive chunks of K (remainder dropped). Each frame is
  cropped with the 3DDFA landmark box clipped to the image (as ``folder:``), 2D-only labels (``has_params``
  False, landmarks in crop coordinates, mask = finite points), ``group`` = the clip's index in the sorted clip
  list, ``name`` ``<clip>/<frame>``, ``source`` "clips". A missing / corrupt image or ``.pts`` is a
  ``BadExample`` naming the file.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np

from jface.core import crop
from jface.data import common
from jface.data.common import bad

FRAME_EXTS = (".jpg", ".jpeg", ".png")


def _natural_key(name: str):
  return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


class GroupedSource:
  """``source`` regrouped by origin: chunks of ``k`` examples of one origin (module docstring).

  Args:
    source: random-access source.
    origins: (len(source),) the origin (identity) name of each example.
    k: frames per group.
    what: label for errors (e.g. the data spec).
  Attributes: ``group_size`` k, ``index`` (n,) source index of each example, ``origins`` the distinct origins
  (``group`` indexes them).
  """

  def __init__(self, source, origins: Sequence[str], k: int, what: str = "GroupedSource"):
    if k < 1:
      raise ValueError(f"{what}: group size must be >= 1, got {k}")
    if len(origins) != len(source):
      raise ValueError(f"{what}: {len(origins)} origin names for {len(source)} examples")
    by_origin: dict[str, list[int]] = {}
    for idx, o in enumerate(origins):
      by_origin.setdefault(str(o), []).append(idx)
    index, ids = [], []
    for gid, idxs in enumerate(by_origin.values()):
      for c in range(len(idxs) // k):
        index += idxs[c * k:(c + 1) * k]
        ids.append(gid)
    if not index:
      raise ValueError(f"{what}: no origin has >= {k} examples (of {len(by_origin)} origins)")
    self.source, self.group_size = source, int(k)
    self.origins = list(by_origin)
    self.index = np.asarray(index, np.int64)
    self._ids = np.asarray(ids, np.int64)

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i) -> dict:
    n, i = len(self), int(i)
    i = i + n if i < 0 else i
    if not 0 <= i < n:
      raise IndexError(f"GroupedSource index {i} out of range [0, {n})")
    ex = dict(self.source[int(self.index[i])])
    ex["group"] = int(self._ids[i // self.group_size])
    return ex


def read_pts(path: str) -> np.ndarray:
  """iBUG / 300-VW ``.pts`` (``version: 1``, ``n_points: 68``, ``{``, 68 lines ``x y`` 1-based pixels, ``}``)
  -> (68, 2) float64. Raises ``BadExample`` naming the file."""
  text = common.read_bytes(path).decode("utf-8", "replace")
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  try:
    start = lines.index("{")
    end = lines.index("}", start)
  except ValueError:
    raise bad(path, "not an iBUG .pts file (no '{' ... '}' block)") from None
  header = {}
  for line in lines[:start]:
    key, _, val = line.partition(":")
    header[key.strip()] = val.strip()
  if header.get("n_points") != "68":
    raise bad(path, f"expected n_points: 68, got {header.get('n_points')!r}")
  rows = [line.split() for line in lines[start + 1:end]]
  if len(rows) != 68 or any(len(r) != 2 for r in rows):
    raise bad(path, f"expected 68 lines 'x y' between braces, got {len(rows)} lines")
  try:
    return np.array(rows, np.float64)
  except ValueError as e:
    raise bad(path, f"bad coordinate ({e})") from None


class ClipsSource(common.Source):
  """Clips ``root/<clip>/<frame>`` + ``<frame stem>.pts`` as groups of ``k`` frames (module docstring).

  Attributes: ``names`` (``<clip>/<frame>``), ``clips`` (sorted clip names; ``group`` indexes them),
  ``group_size`` k.
  """

  def __init__(self, root: str, k: int = 2, source: str = "clips", crop_size: int = common.CROP_SIZE):
    if k < 1:
      raise ValueError(f"ClipsSource: k must be >= 1, got {k}")
    if not os.path.isdir(root):
      raise FileNotFoundError(f"ClipsSource: no folder {root}")
    clips = {}
    for d in sorted(os.listdir(root), key=_natural_key):
      path = os.path.join(root, d)
      if os.path.isdir(path):
        frames = sorted((f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTS)
                         and os.path.isfile(os.path.join(path, f))), key=_natural_key)
        if frames:
          clips[d] = frames
    if not clips:
      raise ValueError(f"{root}: no clips (expected {root}/<clip>/ folders of *.jpg|*.png frames, each with a "
                       "68-point <frame>.pts)")
    self.root, self.group_size, self.source, self.crop_size = root, int(k), source, crop_size
    self.clips = list(clips)
    self.names, self._ids = [], []
    for cid, (clip, frames) in enumerate(clips.items()):
      keep = len(frames) - len(frames) % k
      self.names += [f"{clip}/{f}" for f in frames[:keep]]
      self._ids += [cid] * keep
    if not self.names:
      raise ValueError(f"{root}: no clip has >= {k} frames (of {len(self.clips)} clips)")

  def _load(self, i: int) -> dict:
    name = self.names[i]
    path = os.path.join(self.root, name)
    pts = read_pts(os.path.splitext(path)[0] + ".pts")
    img = common.read_image(path)
    mask = np.all(np.isfinite(pts), -1)
    try:
      box = common.roi_box_from_landmarks(pts, mask, image_shape=img.shape)
      patch = common.crop_image(img, box, self.crop_size)
    except ValueError as e:
      raise bad(path, f"no usable crop ({e})") from None
    lm = crop.image_to_crop(np.where(mask[:, None], pts, 0), box, self.crop_size)
    return common.make_example(patch, box, source=self.source, name=name, landmarks=lm, landmarks_mask=mask,
                               crop_size=self.crop_size, group=int(self._ids[i]))
