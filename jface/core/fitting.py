"""Fitting the 62 3DMM parameters to (partial) 2D landmarks -- how 300W-LP was labelled.

``fit_landmarks`` turns 68 2D landmarks in crop coordinates into whitened params, so that 2D-only images get
pseudo-3D labels. Per sample (everything jitted and vmapped over the batch):

1. closed-form start: weighted least-squares *affine* camera from the mean 3D landmarks to the visible 2D points,
   projected to the nearest scaled-orthographic camera (the 2x3 block's polar factor, mean singular value as scale);
2. ``n_alt`` alternations: with the pose fixed the landmarks are linear in the whitened (a_shp, a_exp), solved in
   closed form as ridge regression; with the shape fixed the camera is re-solved as in (1);
3. ``n_iters`` damped Gauss-Newton (Levenberg-Marquardt) steps on all parameters jointly (rotation as a
   rotation-vector increment, log-scale, 2D translation, 50 whitened coefficients), each step kept only if it
   lowers the cost.

Cost (pixels of the 120x120 crop, whitened coefficients ``a``):
``sum_visible |proj_k - q_k|^2 + shape_prior * |a_shp|^2 + exp_prior * |a_exp|^2``,
i.e. a Gaussian prior N(0, sigma^2 / prior) on the whitened coefficients for sigma-pixel landmark noise.

Conventions: points are crop coordinates ``(x, y)`` with ``y = crop_size + 1 - v_y`` (see ``jface.core.geometry``);
the fit works in camera space. The stored scaled rotation ``fR = s R`` fills ``p[:12]`` (rows of ``P = [fR | t]``,
third row ``s (r1 x r2)``); ``t_z`` is unobservable from 2D points: it is kept from ``init`` when given, else set
to the whitening mean (whitened 0).
The pose of the result is ``geometry.rotation_from_params(geometry.dewhiten(model, pw))`` /
``geometry.pose_angles(model, pw)`` (also returned in the diagnostics).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jface.core import geometry
from jface.core.face_model import FaceModel, N_EXP, N_LANDMARKS, N_SHP

MIN_VISIBLE = 6
PAD_TO = 8  # batches are padded to a multiple of this inside fit_landmarks (fewer compilations)
N_COEF = N_SHP + N_EXP
CONTOUR = tuple(range(17))  # iBUG-68 jaw line: a 2D detector puts these on the silhouette, the 3DMM on fixed vertices


def contour_weights(jaw_weight: float) -> jax.Array:
  """(68,) point weights: ``jaw_weight`` on the 17 jaw-line points, 1 elsewhere (for ``fit_landmarks(weights=)``)."""
  return jnp.ones(N_LANDMARKS, jnp.float32).at[jnp.array(CONTOUR)].set(jaw_weight)


# ------------------------------------------------------------------------------------- helpers

def _model_terms(model: FaceModel):
  """Normalised model: S(a) = S0 + Bw a in units where the mean landmarks are centred with unit RMS.

  Returns (S0 (68,3), Bw (68,3,50) basis per whitened coefficient, c0 (3,) centre, kappa scalar).
  """
  u = model.u_base.reshape(N_LANDMARKS, 3)
  c0 = jnp.mean(u, axis=0)
  kappa = jnp.sqrt(jnp.mean(jnp.sum((u - c0) ** 2, axis=-1)))
  w = jnp.concatenate([model.w_shp_base, model.w_exp_base], axis=1)        # (204, 50)
  mean_a, std_a = model.param_mean[12:], model.param_std[12:]
  s0 = (u + (w @ mean_a).reshape(N_LANDMARKS, 3) - c0) / kappa
  bw = (w * std_a).reshape(N_LANDMARKS, 3, N_COEF) / kappa
  return s0, bw, c0, kappa


def _rodrigues(w: jax.Array) -> jax.Array:
  """Rotation vector (3,) -> rotation matrix (3, 3); smooth at 0."""
  th2 = jnp.sum(w * w)
  th = jnp.sqrt(th2 + 1e-30)
  small = th2 < 1e-8
  a = jnp.where(small, 1.0 - th2 / 6.0, jnp.sin(th) / th)
  b = jnp.where(small, 0.5 - th2 / 24.0, (1.0 - jnp.cos(th)) / (th2 + 1e-30))
  k = jnp.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
  return jnp.eye(3) + a * k + b * (k @ k)


def _full_rotation(r2: jax.Array) -> jax.Array:
  """(2, 3) orthonormal rows -> proper rotation (3, 3)."""
  return jnp.concatenate([r2, jnp.cross(r2[0], r2[1])[None]], axis=0)


def _spd_solve(h: jax.Array, g: jax.Array) -> jax.Array:
  """Solves h x = g for a symmetric positive-definite h (Cholesky; compiles faster than LU)."""
  return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), g)


def _inv3(a: jax.Array) -> jax.Array:
  """Inverse of a (3, 3) matrix by its adjugate (cheaper to compile than a LAPACK call)."""
  c0, c1, c2 = a[0], a[1], a[2]
  adj = jnp.stack([jnp.cross(c1, c2), jnp.cross(c2, c0), jnp.cross(c0, c1)], axis=-1)
  return adj / jnp.dot(c0, jnp.cross(c1, c2))


def _camera(shape: jax.Array, q: jax.Array, m: jax.Array):
  """Weighted affine camera (shape (68,3) -> q (68,2)) projected to scaled orthographic: (R (3,3), s, t (2,)).

  The nearest orthonormal rows to the affine 2x3 block A are ``(A A^T)^(-1/2) A`` and the scale is the mean
  singular value of A; both from the closed-form square root of the 2x2 SPD matrix ``A A^T``.
  """
  wsum = jnp.maximum(jnp.sum(m), 1.0)
  xbar = jnp.sum(m[:, None] * shape, 0) / wsum
  qbar = jnp.sum(m[:, None] * q, 0) / wsum
  xc, qc = shape - xbar, q - qbar
  wxc = m[:, None] * xc
  aff = (_inv3(wxc.T @ xc + 1e-6 * jnp.eye(3)) @ (wxc.T @ qc)).T           # (2, 3)
  g11, g12, g22 = jnp.sum(aff[0] ** 2), jnp.sum(aff[0] * aff[1]), jnp.sum(aff[1] ** 2)
  sq_det = jnp.sqrt(jnp.maximum(g11 * g22 - g12 ** 2, 0.0))
  root_tr = jnp.sqrt(g11 + g22 + 2.0 * sq_det)                              # = sum of singular values
  # sqrt(gram) = (gram + sq_det I) / root_tr, inverted in closed form (2x2 adjugate)
  det_shift = (g11 + sq_det) * (g22 + sq_det) - g12 ** 2
  inv_sqrt = root_tr / det_shift * jnp.array([[g22 + sq_det, -g12], [-g12, g11 + sq_det]])
  r2 = inv_sqrt @ aff
  r = _full_rotation(r2)
  s = root_tr / 2.0
  return r, s, qbar - s * (r[:2] @ xbar)


def _solve_coefs(r, s, t, s0, bw, q, m, lam):
  """Ridge solve of the whitened coefficients (50,) with the pose fixed."""
  j = (s * jnp.einsum("ij,kjc->kic", r[:2], bw)).reshape(-1, N_COEF)         # (136, 50)
  res = (q - t - s * (s0 @ r[:2].T)).reshape(-1)                            # (136,)
  wj = jnp.repeat(m, 2)[:, None] * j
  h = wj.T @ j + jnp.diag(lam)
  g = wj.T @ res
  return _spd_solve(h + 1e-6 * jnp.eye(h.shape[0]), g)


def _project(r, s, t, a, s0, bw):
  return s * ((s0 + bw @ a) @ r[:2].T) + t                                  # (68, 2)


def _skew(v: jax.Array) -> jax.Array:
  """(..., 3) -> (..., 3, 3) cross-product matrices: skew(v) @ x = v x x."""
  z = jnp.zeros_like(v[..., 0])
  return jnp.stack([jnp.stack([z, -v[..., 2], v[..., 1]], -1), jnp.stack([v[..., 2], z, -v[..., 0]], -1),
                    jnp.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def _rho(e2: jax.Array, c2: jax.Array) -> jax.Array:
  """Per-point loss of squared residuals: Cauchy ``c2 log(1 + e2 / c2)`` when c2 > 0, else plain ``e2``."""
  safe = jnp.where(c2 > 0, c2, 1.0)
  return jnp.where(c2 > 0, safe * jnp.log1p(e2 / safe), e2)


def _cost(r, s, t, a, s0, bw, q, m, lam, c2):
  e2 = jnp.sum((_project(r, s, t, a, s0, bw) - q) ** 2, axis=-1)
  return jnp.sum(m * _rho(e2, c2)) + jnp.sum(lam * a * a)


def _lm_step(carry, s0, bw, q, m, lam, c2):
  """One Levenberg-Marquardt step on (rotation vector, log s, t (2), a (50)) with analytic Jacobians.

  With a robust loss (c2 > 0) the point weights are the IRLS weights of the current residuals; a step is kept
  only if it lowers the (robust) cost.
  """
  r, s, t, a, mu, cost = carry
  shape = s0 + bw @ a                                                       # (68, 3)
  r2 = r[:2]
  proj = s * (shape @ r2.T) + t
  res = proj - q                                                            # (68, 2)
  e2 = jnp.sum(res ** 2, axis=-1)
  w = m * jnp.where(c2 > 0, 1.0 / (1.0 + e2 / jnp.where(c2 > 0, c2, 1.0)), 1.0)
  j_rot = -s * jnp.einsum("ij,kjl->kil", r2, _skew(shape))                  # d/d(theta), R <- R exp(theta)
  j_s = (proj - t)[..., None]                                               # d/d(log s)
  j_t = jnp.broadcast_to(jnp.eye(2), (shape.shape[0], 2, 2))
  j_a = s * jnp.einsum("ij,kjc->kic", r2, bw)
  jac = jnp.concatenate([j_rot, j_s, j_t, j_a], axis=-1).reshape(-1, 6 + N_COEF)   # (136, 56)
  wjac = jnp.repeat(w, 2)[:, None] * jac
  lam_full = jnp.concatenate([jnp.zeros(6, lam.dtype), lam])
  h = wjac.T @ jac + jnp.diag(lam_full)
  g = wjac.T @ res.reshape(-1) + lam_full * jnp.concatenate([jnp.zeros(6, a.dtype), a])
  damp = mu * (jnp.diag(jnp.diag(h)) + 1e-6 * jnp.eye(h.shape[0]))
  delta = -_spd_solve(h + damp, g)
  r_new = r @ _rodrigues(delta[:3])
  s_new, t_new, a_new = s * jnp.exp(delta[3]), t + delta[4:6], a + delta[6:]
  cost_new = _cost(r_new, s_new, t_new, a_new, s0, bw, q, m, lam, c2)
  ok = jnp.all(jnp.isfinite(delta)) & (cost_new < cost)
  upd = lambda new, old: jnp.where(ok, new, old)
  return (upd(r_new, r), upd(s_new, s), upd(t_new, t), upd(a_new, a), jnp.where(ok, mu * 0.3, mu * 10.0),
          upd(cost_new, cost))


def _fit_one(q, m, init, s0, bw, lam, c2, n_alt, n_iters):
  """One sample in normalised camera space from init = (R (3,3), s, t (2,), a (50,)). Returns the same.

  Each of the ``n_alt`` alternations re-solves the camera for the current shape, then the coefficients for
  that camera (so with ``a = 0`` the first one is the closed-form start); then ``n_iters`` LM steps.
  """
  def alternate(_, carry):
    r, s, t = _camera(s0 + bw @ carry[3], q, m)
    return r, s, t, _solve_coefs(r, s, t, s0, bw, q, m, lam)

  r, s, t, a = jax.lax.fori_loop(0, n_alt, alternate, init)
  carry = (r, s, t, a, jnp.asarray(1e-3, q.dtype), _cost(r, s, t, a, s0, bw, q, m, lam, c2))
  r, s, t, a, _, _ = jax.lax.fori_loop(0, n_iters, lambda _, c: _lm_step(c, s0, bw, q, m, lam, c2), carry)
  return r, s, t, a


# ---------------------------------------------------------------------------------------- API

def fit_landmarks(model: FaceModel, pts2d: jax.Array, mask: jax.Array | None = None, *, n_iters: int = 10,
                  n_alt: int = 3, shape_prior: float = 5.0, exp_prior: float = 5.0,
                  weights: jax.Array | None = None, robust_scale: float = 0.0,
                  init: jax.Array | None = None, return_info: bool = False):
  """Fits whitened 3DMM params to 2D landmarks.

  Jitted inside: one compilation per padded batch size (``B`` rounded up to a multiple of ``PAD_TO``) and crop
  size, shared by all models and all values of the keyword arguments.

  Args:
    model: the ``FaceModel`` (only its 68-landmark rows and whitening are used).
    pts2d: (B, 68, 2) landmarks in crop coordinates (``y = crop_size + 1 - v_y``, 1-based).
    mask: (B, 68) bool, False = hidden/unknown; ``None`` = all. Non-finite points count as hidden, so hidden
      points may hold NaN and never influence the fit.
    n_iters: joint Levenberg-Marquardt iterations (converged after ~5 on AFLW2000-3D).
    n_alt: camera/shape alternations before them (at least 1 without ``init``: it is the closed-form start).
    shape_prior, exp_prior: weights (px^2 per whitened unit^2) of the Gaussian prior on the whitened shape /
      expression coefficients (larger = closer to the mean face). The defaults were chosen on FAN landmarks of
      aflw2000_3d_train (NME is flat within +-2% for 3-8); use ~1e-3 for exact synthetic landmarks.
    weights: optional (68,) or (B, 68) per-point weights of the squared residuals; <= 0 = hidden. For a 2D
      detector's landmarks use ``contour_weights(0.03)``: its jaw line follows the silhouette, the model's jaw
      points are fixed vertices (AFLW2000-3D dev NME 3.70 with it, 5.68 without).
    robust_scale: > 0 switches the landmark loss to Cauchy ``c^2 log(1 + e^2 / c^2)`` with ``c`` in pixels
      (IRLS weights in the Gauss-Newton steps; the closed-form start and alternations stay least squares).
    init: optional (B, 62) whitened params to start from (e.g. a network's output) instead of the closed form.
    return_info: also return a diagnostics dict.
  Returns:
    pw (B, 62) float32 whitened params. Samples with fewer than 6 visible points get all-NaN params (no error).
    With ``return_info``: ``(pw, info)``, info = {``reproj_err`` (B,) mean pixel distance over the visible points
    (NaN when not fitted), ``n_visible`` (B,) int32, ``angles`` (B, 3) (yaw, pitch, roll) degrees}.
  """
  pts2d = jnp.asarray(pts2d, jnp.float32)
  if pts2d.ndim != 3 or pts2d.shape[1:] != (N_LANDMARKS, 2) or pts2d.shape[0] == 0:
    raise ValueError(f"fit_landmarks: pts2d must be (B, 68, 2) with B >= 1, got {pts2d.shape}")
  mask = jnp.ones(pts2d.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)
  if mask.shape != pts2d.shape[:2]:
    raise ValueError(f"fit_landmarks: mask must be {pts2d.shape[:2]}, got {mask.shape}")
  weights = jnp.ones(mask.shape, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  if weights.shape not in ((N_LANDMARKS,), mask.shape):
    raise ValueError(f"fit_landmarks: weights must be (68,) or {mask.shape}, got {weights.shape}")
  weights = jnp.broadcast_to(weights, mask.shape)
  if init is not None:
    init = jnp.asarray(init, jnp.float32)
    if init.shape != (pts2d.shape[0], 12 + N_COEF):
      raise ValueError(f"fit_landmarks: init must be ({pts2d.shape[0]}, 62), got {init.shape}")
  use_init = init is not None
  init = jnp.zeros((pts2d.shape[0], 12 + N_COEF), jnp.float32) if init is None else init
  # pad the batch to a multiple of PAD_TO with hidden samples: ragged batches share one compilation
  b = pts2d.shape[0]
  pad = -b % PAD_TO
  if pad:
    padded = lambda x, v: jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], v, x.dtype)])
    pts2d, mask, weights, init = padded(pts2d, 0.0), padded(mask, False), padded(weights, 0.0), padded(init, 0.0)
  # only the 68-landmark rows enter the jitted fit, so every model with this crop size shares one compilation
  light = FaceModel(u_base=model.u_base, w_shp_base=model.w_shp_base, w_exp_base=model.w_exp_base,
                    param_mean=model.param_mean, param_std=model.param_std, name="fit", crop_size=model.crop_size)
  pw, info = _fit_batch(light, pts2d, mask, weights, init, jnp.bool_(use_init), jnp.int32(n_iters),
                        jnp.int32(n_alt), jnp.float32(shape_prior), jnp.float32(exp_prior), jnp.float32(robust_scale))
  if pad:
    pw, info = pw[:b], jax.tree_util.tree_map(lambda x: x[:b], info)
  return (pw, info) if return_info else pw


@jax.jit
def _fit_batch(model, pts2d, mask, weights, init, use_init, n_iters, n_alt, shape_prior, exp_prior, robust_scale):
  m = mask & jnp.all(jnp.isfinite(pts2d), axis=-1) & (weights > 0)
  n_vis = jnp.sum(m, axis=-1).astype(jnp.int32)
  mf = jnp.where(m, weights, 0.0)
  q = jnp.stack([pts2d[..., 0], model.crop_size + 1.0 - pts2d[..., 1]], axis=-1)   # camera space
  q = jnp.where(m[..., None], q, 0.0)
  s0, bw, c0, kappa = _model_terms(model)
  lam = jnp.concatenate([jnp.full((N_SHP,), shape_prior), jnp.full((N_EXP,), exp_prior)])

  # the given params in normalised model units (v = s R S + t = (s kappa) R (S - c0) / kappa + (t + s R c0)), or
  # (without init) a = 0 and at least one alternation, whose camera step is the closed-form start
  p0 = geometry.dewhiten(model, init)
  r, sc = geometry.rotation_from_params(p0)
  _, t0, a_shp0, a_exp0 = geometry.parse_params(p0)
  s, t = sc * kappa, t0[:, :2] + sc[:, None] * jnp.einsum("bij,j->bi", r[:, :2], c0)
  a = jnp.where(use_init, (jnp.concatenate([a_shp0, a_exp0], -1) - model.param_mean[12:]) / model.param_std[12:], 0.0)
  n_alt = jnp.where(use_init, n_alt, jnp.maximum(n_alt, 1))
  fit = jax.vmap(_fit_one, in_axes=(0, 0, (0, 0, 0, 0), None, None, None, None, None, None))
  r, s, t, a = fit(q, mf, (r, s, t, a), s0, bw, lam, robust_scale ** 2, n_alt, n_iters)

  # back to raw 3DDFA params: v = s_n R (S - c0) / kappa + t_n = (s_n / kappa) R S + (t_n - (s_n / kappa) R c0)
  fr = (s / kappa)[:, None, None] * r
  t_xy = t - jnp.einsum("bij,j->bi", fr[:, :2], c0)
  t_z = jnp.where(use_init, t0[:, 2], model.param_mean[11])
  t3 = jnp.concatenate([t_xy, t_z[:, None]], axis=-1)
  a_raw = model.param_mean[12:] + model.param_std[12:] * a
  pw = geometry.whiten(model, geometry.compose_params(fr, t3, a_raw[:, :N_SHP], a_raw[:, N_SHP:]))
  ok = n_vis >= MIN_VISIBLE
  pw = jnp.where(ok[:, None], pw, jnp.nan)
  d = jnp.linalg.norm(geometry.landmarks2d(model, pw) - jnp.where(m[..., None], pts2d, 0.0), axis=-1)
  err = jnp.sum(jnp.where(m, d, 0.0), -1) / jnp.maximum(n_vis, 1)
  info = dict(reproj_err=jnp.where(ok, err, jnp.nan), n_visible=n_vis, angles=geometry.pose_angles(model, pw))
  return pw, info
