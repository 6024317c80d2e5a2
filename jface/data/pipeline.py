"""Input pipeline: deterministic, resumable, threaded batching of example dicts (numpy on the host).

A source is any random-access object (``len(src)``, ``src[i] -> example dict``, see ``datasets/common.py``).
``Loader`` turns it into batches:

* Deterministic in ``(seed, step)``: step ``s`` belongs to epoch ``s // steps_per_epoch``; the epoch's order is
  ``np.random.default_rng([seed, epoch]).permutation(n)`` (or ``arange`` without shuffle) and example ``i`` of
  the epoch is augmented with ``np.random.default_rng([seed, epoch, i])``. ``loader.batch(s)`` is the same
  whatever ran before, and ``loader.iter_from(s)`` yields exactly the batches ``s, s + 1, ...``: a run resumed
  at step ``s`` sees the batches the uninterrupted run would have seen.
* Threaded: ``iter_from`` decodes/augments examples on ``num_threads`` threads (OpenCV and most numpy release
  the GIL) with ``prefetch`` batches in flight beyond the one being consumed.
* Robust: an example whose read raises (any ``Exception``, e.g. ``jface.data.common.BadExample``) or that breaks
  the contract (shapes/dtypes) is replaced by the next usable index of the epoch's order (augmented with
  ``default_rng([seed, epoch, i, replacement])``), counted in ``loader.stats`` and reported by ONE one-line
  ``logging`` warning per bad index (the first ``MAX_WARNINGS`` of them); reading never stops mid-epoch.
  If no index is usable, ``RuntimeError``.
* Grouped sources (PGN's multi-frame streams): a source with an int attribute ``group_size`` K > 1 holds groups
  of K frames of one identity at the contiguous indices ``[g K, (g + 1) K)``. The epoch's order then permutes
  the groups (``default_rng([seed, epoch]).permutation(n // K)``, each expanded to its K indices in source order),
  so batch index ``b K + j`` is frame j of the batch's group b and every batch is whole groups; ``len(source)``
  and ``batch_size`` must be multiples of K (``ValueError``). Bad frames never mix identities: a bad frame is
  replaced by the next readable frame of the SAME group (frame positions j + 1, j + 2, ... cyclically; the group
  then holds a repeated frame); only a group with no readable frame is replaced, as a whole, by the next group
  of the epoch's order that has one (each position taking frame j of it, with the same rule). Examples carry
  ``group`` (int identity index), batched as (B,) int32.

Batches are dicts of stacked numpy arrays: the example fields (``image`` (B, S, S, 3) uint8, ``params``
(B, 62) f32, ``has_params`` (B,) bool, ``landmarks`` (B, 68, 2) f32 -- ground truth, augmented --,
``landmarks_mask`` (B, 68) bool, ``roi_box`` (B, 4) f32, ``yaw`` (B,) f32, ``source``/``name`` (B,) str arrays)
plus ``flm_landmarks`` (B, 68, 2) f32: the landmarks that draw the FLM input, equal to ``landmarks`` plus
optional N(0, ``landmark_noise_px``) jitter (simulated detector noise; losses use ``landmarks``). Optionally
(``flm_alt_prob``) an example's map comes instead, with that probability, from another landmark source's points
(``flm_alt``, added by ``jface.data.flm_alt``; examples whose ``flm_alt`` is not finite keep ``landmarks``), and
(``flm_dropout``) with that probability the map is empty (all NaN: nothing drawn), which teaches a landmark-map
model to work without landmarks. Both draw from the example's generator only when enabled.

A method may train on several streams at once (2DASL: 3D-labelled and 2D-only in-the-wild images): the loop
(``jface.training``) steps one Loader per stream together, each with its own seed; all resume from ``step``.
``numeric(batch)`` drops the string fields before ``jax.device_put``.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import threading
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from jface.data.augment import AugmentConfig, augment

log = logging.getLogger(__name__)

N_LANDMARKS = 68
N_PARAMS = 62
MAX_WARNINGS = 20  # per Loader; later bad examples are only counted


# ------------------------------------------------------------------------------------------ batches

def _group_size(source) -> int:
  """The source's ``group_size`` (int >= 1; 1 when it has none). ``ValueError`` for anything else."""
  k = getattr(source, "group_size", None)
  if k is None:
    return 1
  if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"{type(source).__name__}.group_size must be an int >= 1, got {k!r}")
  return int(k)


def check_example(ex: Mapping[str, Any], size: Optional[int] = None) -> None:
  """Raises ``ValueError`` (one line) if an example breaks the dict contract that batching relies on."""
  image = np.asarray(ex["image"])
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[0] != image.shape[1] or (
      size is not None and image.shape[0] != size):
    raise ValueError(f"image must be ({size or 'S'}, {size or 'S'}, 3) uint8, got {image.shape} {image.dtype}")
  if "group" in ex and (np.ndim(ex["group"]) != 0 or np.asarray(ex["group"]).dtype.kind not in "iu"):
    raise ValueError(f"group must be an integer scalar, got {ex['group']!r}")
  for key, shape in (("params", (N_PARAMS,)), ("landmarks", (N_LANDMARKS, 2)),
                     ("landmarks_mask", (N_LANDMARKS,)), ("roi_box", (4,))):
    if np.shape(ex[key]) != shape:
      raise ValueError(f"{key} must have shape {shape}, got {np.shape(ex[key])}")


def _conform(ex: Mapping[str, Any]) -> dict:
  """Casts the contract fields to their dtypes (sources may hand float64 etc.)."""
  out = dict(ex)
  out["image"] = np.asarray(ex["image"], np.uint8)
  out["params"] = np.asarray(ex["params"], np.float32)
  out["has_params"] = np.bool_(ex["has_params"])
  out["landmarks"] = np.asarray(ex["landmarks"], np.float32)
  out["landmarks_mask"] = np.asarray(ex["landmarks_mask"], bool)
  out["roi_box"] = np.asarray(ex["roi_box"], np.float32)
  out["yaw"] = np.float32(ex["yaw"])
  out["source"] = str(ex["source"])
  out["name"] = str(ex["name"])
  if "group" in ex:
    out["group"] = np.int32(ex["group"])
  return out


def collate(examples: Sequence[Mapping[str, Any]]) -> dict:
  """Stacks example dicts -> dict of (B, ...) arrays; str fields become numpy str arrays."""
  keys = list(examples[0])
  out = {}
  for key in keys:
    try:
      vals = [ex[key] for ex in examples]
    except KeyError:
      raise ValueError(f"examples of one batch disagree on their keys (missing {key!r})") from None
    out[key] = np.asarray(vals, dtype=str) if isinstance(vals[0], str) else np.stack([np.asarray(v) for v in vals])
  return out


def numeric(batch: Mapping[str, Any]) -> dict:
  """The batch without its string fields (what can go to ``jax.device_put``)."""
  return {k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}


class Loader:
  """Deterministic, resumable, threaded batches from a random-access source (see module doc).

  Args:
    source: ``len(source)``, ``source[i] -> example dict``; must be deterministic and thread-safe for reads.
    batch_size: examples per batch.
    seed: int; with the step, the only thing the batches depend on.
    model: ``jface.core.face_model.FaceModel`` (re-whitens augmented params); needed when augmenting examples with params.
    augment_cfg: ``AugmentConfig`` or None (no augmentation; same as ``enabled=False``).
    shuffle: a fresh permutation per epoch; else the source order.
    drop_remainder: every batch full (``n // batch_size`` steps per epoch); else a short last batch.
    num_threads: worker threads of ``iter_from`` (``batch`` runs on the calling thread).
    prefetch: batches prepared ahead of the one being consumed.
    landmark_noise_px: std (crop pixels) of the Gaussian jitter on ``flm_landmarks``.
    flm_alt_prob, flm_dropout: probabilities of the other-source / empty landmark map (module docstring).
    name: label for warnings (default: the source's class name).

  ``group_size``: K of a grouped source (module docstring), else 1.
  """

  def __init__(self, source, batch_size: int, seed: int, *, model=None,
               augment_cfg: Optional[AugmentConfig] = None, shuffle: bool = True, drop_remainder: bool = True,
               num_threads: int = 2, prefetch: int = 2, landmark_noise_px: float = 0.0,
               flm_alt_prob: float = 0.0, flm_dropout: float = 0.0,
               name: Optional[str] = None):
    self.source = source
    self.n = len(source)
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if self.n == 0 or (drop_remainder and self.n < batch_size):
      raise ValueError(f"source has {self.n} examples, fewer than one batch of {batch_size}")
    if num_threads < 1 or prefetch < 0 or landmark_noise_px < 0:
      raise ValueError(f"need num_threads >= 1, prefetch >= 0, landmark_noise_px >= 0; got "
                       f"{num_threads}, {prefetch}, {landmark_noise_px}")
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.model = model
    self.augment_cfg = augment_cfg if augment_cfg is not None and augment_cfg.enabled else None
    self.shuffle = shuffle
    self.drop_remainder = drop_remainder
    self.num_threads = int(num_threads)
    self.prefetch = int(prefetch)
    self.landmark_noise_px = float(landmark_noise_px)
    if not (0 <= flm_alt_prob <= 1 and 0 <= flm_dropout <= 1):
      raise ValueError(f"flm_alt_prob and flm_dropout must be in [0, 1], got {flm_alt_prob}, {flm_dropout}")
    self.flm_alt_prob, self.flm_dropout = float(flm_alt_prob), float(flm_dropout)
    self.name = name or type(source).__name__
    self.group_size = _group_size(source)
    if self.group_size > 1 and (self.n % self.group_size or self.batch_size % self.group_size):
      raise ValueError(f"{self.name}: len(source) {self.n} and batch_size {self.batch_size} must be multiples of "
                       f"the source's group_size {self.group_size}")
    self.steps_per_epoch = self.n // self.batch_size if drop_remainder else math.ceil(self.n / self.batch_size)
    self._lock = threading.Lock()
    self._bad: dict[int, str] = {}
    self._counts = collections.Counter()
    self._perms: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

  # -- bookkeeping
  @property
  def stats(self) -> dict:
    """{'examples': examples delivered, 'bad': distinct bad indices, 'replaced': bad draws replaced}."""
    with self._lock:
      return {"examples": self._counts["examples"], "bad": len(self._bad), "replaced": self._counts["replaced"]}

  @property
  def bad_indices(self) -> dict:
    """{index: one-line reason} of the examples found unreadable so far."""
    with self._lock:
      return dict(self._bad)

  def _mark_bad(self, idx: int, err: Exception) -> None:
    msg = " ".join(f"{type(err).__name__}: {err}".split())
    with self._lock:
      if idx in self._bad:
        return
      self._bad[idx] = msg
      count = len(self._bad)
    if count <= MAX_WARNINGS:
      log.warning("%s: skipping unreadable example %d (replaced by the next one): %s", self.name, idx, msg[:300])
    if count == MAX_WARNINGS:
      log.warning("%s: %d unreadable examples; further ones are skipped silently (see Loader.bad_indices)",
                  self.name, count)

  def _order(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perms.get(epoch)
    if perm is None:
      k = self.group_size
      if not self.shuffle:
        perm = np.arange(self.n)
      elif k > 1:
        groups = np.random.default_rng([self.seed, epoch]).permutation(self.n // k)
        perm = (groups[:, None] * k + np.arange(k)).reshape(-1)
      else:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
      with self._lock:
        self._perms[epoch] = perm
        while len(self._perms) > 3:
          self._perms.popitem(last=False)
    return perm

  def _positions(self, step: int) -> tuple[int, np.ndarray, range]:
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, j = divmod(int(step), self.steps_per_epoch)
    return epoch, self._order(epoch), range(j * self.batch_size, min((j + 1) * self.batch_size, self.n))

  # -- one example
  def _candidates(self, perm: np.ndarray, pos: int) -> Iterator[int]:
    """The indices tried, in order, for position ``pos`` of the epoch (module docstring: robust, grouped)."""
    k = self.group_size
    if k == 1:
      for attempt in range(self.n):
        yield int(perm[(pos + attempt) % self.n])
      return
    n_groups, (gpos, j) = self.n // k, divmod(pos, k)
    for a in range(n_groups):
      first = int(perm[((gpos + a) % n_groups) * k])
      for b in range(k):
        yield first + (j + b) % k

  def _example(self, epoch: int, perm: np.ndarray, pos: int) -> dict:
    want = int(perm[pos])
    for idx in self._candidates(perm, pos):
      with self._lock:
        known_bad = idx in self._bad
      if known_bad:
        continue
      try:
        ex = self.source[idx]
        check_example(ex)
        ex = _conform(ex)
      except Exception as e:  # pylint: disable=broad-except -- any reader failure means "skip this example"
        self._mark_bad(idx, e)
        continue
      key = [self.seed, epoch, want] if idx == want else [self.seed, epoch, want, idx]
      return self._finish(ex, np.random.default_rng(key), replaced=idx != want)
    raise RuntimeError(f"{self.name}: all {self.n} examples are unreadable (first: {next(iter(self._bad.values()))})")

  def _finish(self, ex: dict, rng: np.random.Generator, replaced: bool) -> dict:
    if self.augment_cfg is not None:
      ex = augment(ex, rng, self.model, self.augment_cfg)
    flm = ex["landmarks"]
    alt = ex.pop("flm_alt", None)
    if self.flm_alt_prob > 0 and rng.random() < self.flm_alt_prob and alt is not None and np.isfinite(alt).all():
      flm = np.asarray(alt, np.float32)
    if self.landmark_noise_px > 0:
      flm = (flm + rng.normal(0.0, self.landmark_noise_px, size=flm.shape)).astype(np.float32)
    if self.flm_dropout > 0 and rng.random() < self.flm_dropout:
      flm = np.full(np.shape(flm), np.nan, np.float32)
    ex["flm_landmarks"] = np.array(flm, np.float32)
    with self._lock:
      self._counts["examples"] += 1
      self._counts["replaced"] += int(replaced)
    return ex

  # -- batches
  def batch(self, step: int) -> dict:
    """The batch of global ``step`` (computed on the calling thread)."""
    epoch, perm, positions = self._positions(step)
    return collate([self._example(epoch, perm, pos) for pos in positions])

  def iter_from(self, step: int = 0, num_steps: Optional[int] = None) -> Iterator[dict]:
    """Yields the batches ``step, step + 1, ...`` (forever, or ``num_steps`` of them), prepared on threads."""
    end = None if num_steps is None else step + num_steps
    pool = concurrent.futures.ThreadPoolExecutor(self.num_threads, thread_name_prefix=f"loader-{self.name}")
    pending = collections.deque()
    nxt = int(step)
    try:
      while True:
        while len(pending) <= self.prefetch and (end is None or nxt < end):
          epoch, perm, positions = self._positions(nxt)
          pending.append([pool.submit(self._example, epoch, perm, pos) for pos in positions])
          nxt += 1
        if not pending:
          return
        yield collate([f.result() for f in pending.popleft()])
    finally:
      for futs in pending:
        for f in futs:
          f.cancel()
      pool.shutdown(wait=False, cancel_futures=True)

  def __iter__(self) -> Iterator[dict]:
    return self.iter_from(0)

  def __len__(self) -> int:
    """Steps per epoch."""
    return self.steps_per_epoch
