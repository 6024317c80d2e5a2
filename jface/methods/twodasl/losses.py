"""The 2DASL training losses (Tu et al. 2019, Sec. 3.3-3.5) as pure, jittable JAX functions.

Every function takes a leading batch dimension ``B`` and returns a scalar averaged over the batch.
Conventions are those of ``jface.core.geometry``: ``pw`` are whitened (B, 62) params (what the regressor outputs),
landmarks are crop coordinates of the 120x120 crop, ``(x, y)`` 1-based with ``y = 121 - v_y``, shape (B, K, 2|3).

Overall objective (paper Eq. 1), assembled with ``combine``::

  L = L3d + l1 L2d-con + l2 L3d-con + l3 Lcyc + l4 Lsc,   (l1, l2, l3, l4) = (0.005, 0.005, 1, 0.005)

========================  ==============================================  ===================================
paper symbol              function                                        unit
========================  ==============================================  ===================================
W = diag(w_1..w_62)       ``coefficient_weights``                          dimensionless, sums to 1 per sample
L3d                       ``weighted_coefficient_loss``                    (whitened units)^2
VDC (stage 2, 3DDFA)      ``vertex_distance_loss``                         crop pixels^2
L2d-con                   ``landmark_consistency_2d``                      crop pixels (weighted mean)
L3d-con                   ``landmark_consistency_3d``                      crop pixels (mean over points)
Lcyc                      ``cycle_consistency_loss``                       crop pixels (weighted mean)
Lsc (critic side)         ``critic_loss``                                  nats
Lsc (regressor side)      ``adversarial_loss``                             nats
========================  ==============================================  ===================================

Normalisation of the landmark losses (a deliberate choice; the paper writes plain sums). The paper gives the
L2d-con weights only as ratios (4:2:1), so only a weight-*normalised* sum is fully specified by it. We therefore
use, per sample, ``sum_i v_i m_i d_i / sum_i v_i m_i`` (m_i = 1 for a valid landmark, d_i the Euclidean point
distance), i.e. a weighted mean point error in crop pixels, invariant to the weights' scale and to how many
landmarks are visible; L3d-con is the same with all v_i = 1. ``normalize=False`` gives the paper's literal sum
``sum_i v_i m_i d_i`` (for L3d-con: 68x the mean; for L2d-con: ``sum(v)``x the mean when all points are valid).
The batch average is over samples with at least one valid landmark (a sample with none contributes nothing).

Missing landmarks: pass ``mask`` (B, K) (True = valid, e.g. the example dict's ``landmarks_mask``, or
``landmark_visibility`` for the AFLW ``x = -1`` marker). Non-finite points (NaN / inf) are masked automatically.
Invalid points are replaced by 0 *before* the difference and the norm has a finite (zero) gradient at 0, so
NaN inputs never reach the value or the gradient.

The 18-point set of L2d-con (``DEFAULT_SUBSET_18``). The paper discards the 17 contour points, keeps 18 points
(17 of iBUG-68 points 17..67 plus the mouth centre = midpoint of the corners 48 and 54) with weights
red:pink:yellow = 4:2:1, but lists neither the points nor their colours (Fig. 4). Our choice (0-based iBUG-68):

====  ========  ==============================  ======
slot  iBUG-68   point                           weight
====  ========  ==============================  ======
0     17        brow, outer end (image left)    1
1     19        brow, middle                    1
2     21        brow, inner end                 1
3     22        brow, inner end (image right)   1
4     24        brow, middle                    1
5     26        brow, outer end                 1
6     36        eye, outer corner               1
7     39        eye, inner corner               2
8     42        eye, inner corner               2
9     45        eye, outer corner               1
10    27        nose bridge, top                1
11    30        nose tip                        4
12    31        nostril wing                    1
13    33        nose base (subnasale)           1
14    35        nostril wing                    1
15    48        mouth corner                    2
16    54        mouth corner                    2
17    48+54     mouth centre (midpoint)         4
====  ========  ==============================  ======

Weight tiers: 2 points at 4 (nose tip, mouth centre), 4 at 2 (inner eye and mouth corners), 12 at 1 (brows,
outer eye corners, the rest of the nose). "Adding weights to central points" (paper Sec. 4.4) motivates the
central points getting the largest weights. The tier sizes (2/4/12) match the authors' public code
(github.com/XgTu/2DASL, ``lmsMask_18pts``, weights 2/1/0.5), whose set differs slightly: it uses the eye
centres (midpoints of 37/40 and 43/46) instead of our 27/33 and the inner-lip midpoint (62+66)/2 as mouth
centre; we follow the paper's text (corner midpoint). Any set is configurable through ``LandmarkSubset``.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from jface.core import geometry
from jface.core.face_model import FaceModel, N_LANDMARKS, N_PARAMS

MOUTH_CORNERS = (48, 54)

# Regressor-side weights of paper Eq. 1 (lambda_1..lambda_4); L3d (and stage 2's VDC) have weight 1.
PAPER_LAMBDAS = dict(l2d_con=0.005, l3d_con=0.005, cyc=1.0, sc=0.005)
_UNIT_WEIGHT_KEYS = ("l3d", "vdc")


# ------------------------------------------------------------------------------------------ helpers

def _check_params(*arrays):
  for a in arrays:
    if a.ndim != 2 or a.shape[-1] != N_PARAMS:
      raise ValueError(f"expected whitened params of shape (B, {N_PARAMS}), got {tuple(a.shape)}")
  if len({a.shape for a in arrays}) != 1:
    raise ValueError(f"param shapes differ: {[tuple(a.shape) for a in arrays]}")


def _check_points(x, y, mask, k=None):
  if x.ndim != 3 or x.shape != y.shape:
    raise ValueError(f"expected two point arrays of the same shape (B, K, D), got {tuple(x.shape)} "
                     f"and {tuple(y.shape)}")
  if k is not None and x.shape[1] != k:
    raise ValueError(f"expected {k} points, got shape {tuple(x.shape)}")
  if mask is not None and tuple(mask.shape) != x.shape[:2]:
    raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {x.shape[:2]}")


def safe_norm(v: jax.Array, axis: int = -1) -> jax.Array:
  """Euclidean norm over ``axis`` whose gradient is 0 (not NaN) where ``v`` is 0."""
  sq = jnp.sum(v * v, axis=axis)
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def landmark_visibility(pts: jax.Array, missing_value: float = -1.0) -> jax.Array:
  """(..., K, D) points -> (..., K) bool: finite and ``x != missing_value`` (AFLW marks invisible with x = -1)."""
  return jnp.all(jnp.isfinite(pts), axis=-1) & (pts[..., 0] != missing_value)


def _point_distances(x, y, mask):
  """(B, K, D) x2 -> (distances (B, K), valid (B, K) bool); invalid points give distance 0, no NaN."""
  valid = jnp.all(jnp.isfinite(x), axis=-1) & jnp.all(jnp.isfinite(y), axis=-1)
  if mask is not None:
    valid = valid & jnp.asarray(mask).astype(bool)
  v = valid[..., None]
  diff = jnp.where(v, x, 0.0) - jnp.where(v, y, 0.0)
  return safe_norm(diff, axis=-1), valid


def _reduce(d, valid, weights, normalize):
  """Per-sample weighted sum / mean over points, then the mean over samples with any valid point."""
  vw = jnp.where(valid, weights, 0.0)
  per = jnp.sum(vw * d, axis=-1)
  if normalize:
    tot = jnp.sum(vw, axis=-1)
    per = jnp.where(tot > 0, per / jnp.where(tot > 0, tot, 1.0), 0.0)
  n = jnp.sum(jnp.any(valid, axis=-1))
  return jnp.sum(per) / jnp.maximum(n, 1)


# ------------------------------------------------------------------------- L3d: weighted coefficients

WEIGHT_FORMS = ("2d", "3d")


def coefficient_weights(model: FaceModel, pw_pred: jax.Array, pw_gt: jax.Array, form: str = "2d") -> jax.Array:
  """W of paper Sec. 3.3: ``w_i = ||H(a_i) - H(a*)|| / sum_j ||H(a_j) - H(a*)||``, shape (B, 62).

  ``form="2d"`` (the paper's sentence): ``H = geometry.landmarks2d`` (68 projected landmarks, crop pixels).
  ``form="3d"`` (3DDFA's WPDC, which 2DASL says it follows): ``H = geometry.landmarks3d`` (68 x 3, z in the same
  pixel units), and the weight of t_z (coefficient 11, a global depth offset a single image cannot determine)
  is 0, as WPDC's. ``a_i`` takes coefficient i from the prediction and the other 61 from the ground truth;
  ``||.||`` is the Frobenius norm over all 68 x 2 (or x 3) coordinates. The substitution is done on whitened
  params: whitening is per coefficient (``p_i = pw_i std_i + mean_i``), so substituting coefficient i before or
  after dewhitening gives the same ``a_i``. Computed with ``jax.vmap`` over the 62 substitutions and the batch.

  The weights are wrapped in ``stop_gradient`` (held constant for the gradient, as 3DDFA's WPDC). In the 2D form
  coefficients 8..11 (the third row of ``[fR | t]``, incl. t_z) only move depth, not the 2D landmarks, so their
  weights are 0 (up to float rounding) and L3d never supervises depth; the 3D form weights 8..10 too. When the
  prediction equals the target (all distances 0) the weights are all 0.
  """
  _check_params(pw_pred, pw_gt)
  if form not in WEIGHT_FORMS:
    raise ValueError(f"coefficient weight form must be one of {WEIGHT_FORMS}, got {form!r}")
  project = geometry.landmarks2d if form == "2d" else geometry.landmarks3d
  pw_pred = jax.lax.stop_gradient(pw_pred)
  pw_gt = jax.lax.stop_gradient(pw_gt)
  select = jnp.eye(N_PARAMS, dtype=bool)  # row i: take coefficient i from the prediction

  def per_sample(pred, gt):
    # row 0 is the ground truth itself, so that H(a*) and H(a_i) are computed by the same batched ops
    # (bitwise equal when a_i == a*, e.g. pred == gt, instead of differing by float rounding).
    mixed = jnp.concatenate([gt[None, :], jnp.where(select, pred[None, :], gt[None, :])])  # (63, 62)
    h = jax.vmap(lambda p: project(model, p))(mixed)  # (63, 68, 2|3)
    d = safe_norm((h[1:] - h[:1]).reshape(N_PARAMS, -1), axis=-1)  # (62,)
    if form == "3d":
      d = d.at[11].set(0.0)  # t_z
    tot = jnp.sum(d)
    return jnp.where(tot > 0, d / jnp.where(tot > 0, tot, 1.0), 0.0)

  return jax.lax.stop_gradient(jax.vmap(per_sample)(pw_pred, pw_gt))


def weighted_coefficient_loss(model: FaceModel, pw_pred: jax.Array, pw_gt: jax.Array, form: str = "2d") -> jax.Array:
  """L3d of paper Sec. 3.3: ``(a* - a)^T W (a* - a)``, averaged over the batch, W = ``coefficient_weights`` of
  ``form``. Scalar.

  The residual ``a* - a`` is in *whitened* space, the space the network outputs and 3DDFA's WPDC (which 2DASL
  follows) uses: raw coefficients span ~10 orders of magnitude (rotation ~1e-4, shape ~1e5), so a raw residual
  would let the shape coefficients swamp the quadratic form, while W already carries the landmark-space
  importance. No further constant: per sample ``sum_i w_i r_i^2`` with ``sum_i w_i = 1``, i.e. a weighted mean
  squared whitened residual (3DDFA instead normalises W by its max and averages over the 62 terms).
  """
  w = coefficient_weights(model, pw_pred, pw_gt, form)
  r = pw_gt - pw_pred
  return jnp.mean(jnp.sum(w * r * r, axis=-1))


def vertex_distance_loss(model: FaceModel, pw_pred: jax.Array, pw_gt: jax.Array,
                         dense: Optional[bool] = None, match_tz: bool = True) -> jax.Array:
  """Vertex Distance Cost of 3DDFA (Zhu et al. 2016), used for 2DASL's stage-2 fine-tuning. Scalar, px^2.

  ``mean_{b,k,c} (V(a)_kc - V(a*)_kc)^2`` over the batch, the vertices and the 3 coordinates (crop pixels,
  z included), as 3DDFA's released ``VDCLoss`` (the paper writes ``||V(a) - V(a*)||^2``; the mean only
  rescales it by 1 / (3 K)). Vertices are ``geometry.dense_vertices`` when ``dense`` (default: when the model
  has dense bases), else the 68 3D landmarks ``geometry.landmarks3d``. ``dense=True`` without dense bases
  raises ``ValueError``. With ``match_tz`` (3DDFA's choice) the predicted depth offset t_z (coefficient 11) is
  replaced by the ground truth's: it is a global z shift the image cannot determine.
  """
  _check_params(pw_pred, pw_gt)
  use_dense = model.has_dense_bases if dense is None else bool(dense)
  if use_dense and not model.has_dense_bases:
    raise ValueError("vertex_distance_loss(dense=True) needs the dense bases (w_shp_sim.npy / w_exp_sim.npy); "
                     "this FaceModel has none")
  if match_tz:
    pw_pred = pw_pred.at[:, 11].set(pw_gt[:, 11])
  fn = geometry.dense_vertices if use_dense else geometry.landmarks3d
  diff = fn(model, pw_pred) - fn(model, pw_gt)
  return jnp.mean(diff * diff)


# ------------------------------------------------------------------------- L2d-con, L3d-con, Lcyc

@dataclasses.dataclass(frozen=True)
class LandmarkSubset:
  """A weighted subset of the 68 iBUG landmarks for L2d-con / Lcyc (hashable: usable as a static jit arg).

  indices: 0-based iBUG-68 indices; weights: one positive weight per selected point, the mouth centre last
  (so ``len(weights) == len(indices) + add_mouth_centre``); add_mouth_centre: append the midpoint of the mouth
  corners 48 and 54.
  """
  indices: tuple
  weights: tuple
  add_mouth_centre: bool = True

  def __post_init__(self):
    idx = tuple(int(i) for i in self.indices)
    w = tuple(float(v) for v in self.weights)
    object.__setattr__(self, "indices", idx)
    object.__setattr__(self, "weights", w)
    if len(w) != self.size:
      raise ValueError(f"LandmarkSubset needs {self.size} weights (indices + mouth centre), got {len(w)}")
    if any(i < 0 or i >= N_LANDMARKS for i in idx):
      raise ValueError(f"LandmarkSubset indices must lie in [0, {N_LANDMARKS}), got {idx}")
    if not all(v > 0 and v < float("inf") for v in w):
      raise ValueError(f"LandmarkSubset weights must be positive and finite, got {w}")

  @property
  def size(self) -> int:
    return len(self.indices) + int(self.add_mouth_centre)


DEFAULT_SUBSET_18 = LandmarkSubset(
    indices=(17, 19, 21, 22, 24, 26, 36, 39, 42, 45, 27, 30, 31, 33, 35, 48, 54),
    weights=(1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 1, 4, 1, 1, 1, 2, 2, 4),
    add_mouth_centre=True)


def select_subset(pts68: jax.Array, mask68: Optional[jax.Array] = None,
                  subset: LandmarkSubset = DEFAULT_SUBSET_18):
  """(B, 68, D) points, optional (B, 68) mask -> ((B, S, D) points, (B, S) bool mask), S = ``subset.size``.

  The mouth centre is the midpoint of points 48 and 54, valid only if both corners are (mask and finiteness
  are checked again by the losses). A ``None`` mask means all valid.
  """
  if pts68.ndim != 3 or pts68.shape[1] != N_LANDMARKS:
    raise ValueError(f"select_subset expects (B, {N_LANDMARKS}, D) points, got {tuple(pts68.shape)}")
  if mask68 is None:
    mask68 = jnp.ones(pts68.shape[:2], bool)
  elif tuple(mask68.shape) != pts68.shape[:2]:
    raise ValueError(f"mask has shape {tuple(mask68.shape)}, expected {pts68.shape[:2]}")
  mask68 = jnp.asarray(mask68).astype(bool)
  idx = jnp.asarray(subset.indices, jnp.int32)
  pts, mask = pts68[:, idx], mask68[:, idx]
  if subset.add_mouth_centre:
    a, b = MOUTH_CORNERS
    centre = 0.5 * (pts68[:, a] + pts68[:, b])
    pts = jnp.concatenate([pts, centre[:, None]], axis=1)
    mask = jnp.concatenate([mask, (mask68[:, a] & mask68[:, b])[:, None]], axis=1)
  return pts, mask


def landmark_consistency_2d(x2d: jax.Array, y2d: jax.Array, mask: Optional[jax.Array] = None,
                            subset: LandmarkSubset = DEFAULT_SUBSET_18, normalize: bool = True) -> jax.Array:
  """L2d-con of paper Sec. 3.4: ``sum_i v_i ||x_i - y_i||`` over the subset's points. Scalar, crop pixels.

  x2d: (B, 68, 2) input 2D landmarks (e.g. from the detector); y2d: (B, 68, 2) landmarks of the prediction
  (``geometry.landmarks2d``); mask: optional (B, 68) validity of x2d. Per sample the weighted *mean*
  ``sum v_i m_i d_i / sum v_i m_i`` (``normalize=False``: the literal weighted sum), then averaged over the
  samples with at least one valid point; see the module docstring.
  """
  _check_points(x2d, y2d, mask, N_LANDMARKS)
  xs, ms = select_subset(x2d, mask, subset)
  ys, _ = select_subset(y2d, None, subset)
  d, valid = _point_distances(xs, ys, ms)
  return _reduce(d, valid, jnp.asarray(subset.weights, d.dtype), normalize)


def landmark_consistency_3d(x3d: jax.Array, x3d_hat: jax.Array, mask: Optional[jax.Array] = None,
                            normalize: bool = True) -> jax.Array:
  """L3d-con of paper Sec. 3.4: ``sum_{i=1}^{68} ||x_i - x^_i||`` of 3D landmarks. Scalar, crop pixels.

  x3d, x3d_hat: (B, K, 3) (K = 68: ``geometry.landmarks3d`` of the forward and backward passes);
  mask: optional (B, K). Per sample the mean over valid points (``normalize=False``: the paper's sum), then
  averaged over the samples with at least one valid point.
  """
  _check_points(x3d, x3d_hat, mask)
  d, valid = _point_distances(x3d, x3d_hat, mask)
  return _reduce(d, valid, jnp.ones((), d.dtype), normalize)


def cycle_consistency_loss(x2d: jax.Array, x2d_hat: jax.Array, mask: Optional[jax.Array] = None,
                           subset: LandmarkSubset = DEFAULT_SUBSET_18, normalize: bool = True) -> jax.Array:
  """Lcyc of paper Sec. 3.4: ``L2d-con(x2d, x^2d)``, x^2d (B, 68, 2) from the backward pass Q(F(x))."""
  return landmark_consistency_2d(x2d, x2d_hat, mask, subset, normalize)


def cycle_losses(model: FaceModel, pw_fwd: jax.Array, pw_bwd: jax.Array, x2d: jax.Array,
                 mask: Optional[jax.Array] = None, subset: LandmarkSubset = DEFAULT_SUBSET_18,
                 normalize: bool = True) -> dict:
  """The three self-supervised terms of Fig. 3 from the two passes' predictions. -> dict of scalars.

  pw_fwd: (B, 62) prediction from the input landmarks x2d (B, 68, 2) (forward pass F: X2d -> Y2d, X3d);
  pw_bwd: (B, 62) prediction from the forward pass's landmarks Y2d (backward pass Q: -> X^3d, X^2d).
  Returns ``{"l2d_con": L2d-con(x2d, Y2d), "l3d_con": L3d-con(X3d, X^3d), "cyc": L2d-con(x2d, X^2d)}``.
  """
  _check_params(pw_fwd, pw_bwd)
  x3d, x3d_hat = geometry.landmarks3d(model, pw_fwd), geometry.landmarks3d(model, pw_bwd)
  return dict(l2d_con=landmark_consistency_2d(x2d, x3d[..., :2], mask, subset, normalize),
              l3d_con=landmark_consistency_3d(x3d, x3d_hat, None, normalize),
              cyc=cycle_consistency_loss(x2d, x3d_hat[..., :2], mask, subset, normalize))


# ------------------------------------------------------------------------------------- self-critic

def critic_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Critic side of Lsc (paper Sec. 3.5), minimised by the critic. Scalar.

  The paper's critic maximises ``E[log D([z*, a*])] + E[log(1 - D([z, R(I)]))]``; written as a minimised
  binary cross-entropy: ``mean(-log s(real)) + mean(-log(1 - s(fake)))``, from logits (numerically stable,
  ``optax.sigmoid_binary_cross_entropy``). real_logits / fake_logits: (B,) or (B, 1) critic outputs for
  (latent, ground-truth params) and (latent, predicted params) pairs. The paper's critic ends in "a softmax"
  over a single output; a sigmoid on one logit is the equivalent 2-class softmax (logits (l, 0)).
  Equals ``2 log 2`` at logits 0.
  """
  real = jnp.reshape(real_logits, (real_logits.shape[0], -1))
  fake = jnp.reshape(fake_logits, (fake_logits.shape[0], -1))
  return (jnp.mean(optax.sigmoid_binary_cross_entropy(real, jnp.ones_like(real)))
          + jnp.mean(optax.sigmoid_binary_cross_entropy(fake, jnp.zeros_like(fake))))


def adversarial_loss(fake_logits: jax.Array) -> jax.Array:
  """Regressor side of Lsc: ``mean(-log s(fake))`` (non-saturating), minimised by the regressor. Scalar.

  The paper's minimax form has the regressor minimise ``log(1 - D(fake))``, whose gradient vanishes when the
  critic confidently rejects the predictions (early training); ``-log D(fake)`` has the same fixed point and
  strong gradients there (Goodfellow et al. 2014). This is the ``Lsc`` term of ``combine``.
  """
  fake = jnp.reshape(fake_logits, (fake_logits.shape[0], -1))
  return jnp.mean(optax.sigmoid_binary_cross_entropy(fake, jnp.ones_like(fake)))


# ------------------------------------------------------------------------------------------- total

def combine(losses: Mapping[str, jax.Array], weights: Mapping[str, float] = PAPER_LAMBDAS) -> jax.Array:
  """Weighted sum ``sum_k weights[k] * losses[k]``: paper Eq. 1 with keys l3d, l2d_con, l3d_con, cyc, sc.

  ``l3d`` and ``vdc`` default to weight 1 (L3d is unweighted in Eq. 1); any other key of ``losses`` needs a
  weight (``ValueError`` otherwise). Weights of absent losses are ignored, so partial objectives (stage 2:
  ``{"vdc": ...}``; ablations) use the same helper.
  """
  total = jnp.zeros((), jnp.float32)
  for k, v in losses.items():
    if k in weights:
      w = weights[k]
    elif k in _UNIT_WEIGHT_KEYS:
      w = 1.0
    else:
      raise ValueError(f"combine: no weight for loss {k!r} (weights has {sorted(weights)})")
    total = total + w * v
  return total
