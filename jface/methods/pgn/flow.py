"""PGN's flow consistency (Liu et al. 2020, Sec. 3.4, Eq. 10) with a differentiable pyramidal Lucas-Kanade flow.

The paper measures the optical flow between ``I2`` and the rendered ``I_{1->2}`` with a flow network [32] and
minimises its magnitude, ``Lf = sum |w(I2, I_{1->2})| * W / sum W``. Offline we use classical dense Lucas-Kanade
(coarse to fine, a few Gauss-Newton iterations per level), written in JAX so that the loss differentiates
through the flow estimate to the rendered image (and on to the geometry that rendered it).

Flow convention: ``flow[b, y, x] = (u, v)`` in pixels (x right, y down) such that ``img_b(x + u, y + v) ~
img_a(x, y)``. Grey images (B, H, W) (any scale: the ridge is relative to the image's gradient energy); flows
(B, H, W, 2); weights (B, H, W). Jittable, float32, no stop_gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jface.core import uv as uv_lib

_FLOOR = 1e-9  # absolute floor of the ridge: keeps the 2x2 solve finite (zero flow) for constant images


def _pool2(img: jax.Array) -> jax.Array:
  """(B, H, W) -> (B, H // 2, W // 2) 2 x 2 average (an odd last row / column is dropped)."""
  s = jax.lax.reduce_window(img, 0.0, jax.lax.add, (1, 2, 2), (1, 2, 2), "VALID")
  return s * 0.25


def _box(img: jax.Array, window: int) -> jax.Array:
  """(B, H, W) -> window x window box mean, zero padding beyond the border (same shape)."""
  s = jax.lax.reduce_window(img, 0.0, jax.lax.add, (1, window, window), (1, 1, 1), "SAME")
  return s / float(window * window)


def _grads(img: jax.Array):
  """Central differences (one-sided halves at the border): (B, H, W) -> (Ix, Iy)."""
  p = jnp.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
  ix = 0.5 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2])
  iy = 0.5 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1])
  return ix, iy


def _grid(h: int, w: int) -> jax.Array:
  """(H, W, 2) 0-based pixel centres (x, y)."""
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  return jnp.stack([xs, ys], axis=-1)


def _sample(maps: jax.Array, pts: jax.Array) -> jax.Array:
  """maps (B, h, w, C) at 0-based pts (B, H, W, 2) -> (B, H, W, C) bilinear, border clamp."""
  b, h, w = pts.shape[:3]
  return uv_lib.sample_map(maps, pts.reshape(b, h * w, 2)).reshape(b, h, w, maps.shape[-1])


def _upsample_flow(flow: jax.Array, h: int, w: int) -> jax.Array:
  """Coarse (B, h', w', 2) flow -> (B, H, W, 2) on the next finer level (pixel sizes halve: values x 2).
  Fine pixel ``j`` has its centre at coarse coordinate ``(j - 0.5) / 2``."""
  pts = (_grid(h, w) - 0.5) * 0.5
  return 2.0 * _sample(flow, jnp.broadcast_to(pts, (flow.shape[0], h, w, 2)))


def _refine(a: jax.Array, b: jax.Array, flow: jax.Array, iters: int, window: int, eps: float) -> jax.Array:
  """``iters`` Lucas-Kanade iterations at one pyramid level: a, b (B, H, W), flow (B, H, W, 2) -> refined flow."""
  ix, iy = _grads(a)
  gxx, gxy, gyy = ix * ix, ix * iy, iy * iy
  lam = eps * jnp.mean(gxx + gyy, axis=(1, 2), keepdims=True) + _FLOOR
  axx, axy, ayy = _box(gxx, window), _box(gxy, window), _box(gyy, window)
  det = (axx + lam) * (ayy + lam) - axy * axy  # >= lam^2 > 0: A is positive semi-definite
  grid = _grid(*a.shape[1:])

  def step(_, flow):
    u, v = flow[..., 0], flow[..., 1]
    it = _sample(b[..., None], grid + flow)[..., 0] - a
    # The window's residuals moved (to first order) from their own flow to the centre pixel's, then summed:
    # the solve is exact for a translating window even where the current flow field is rough.
    bx = _box(ix * it - gxx * u - gxy * v, window) + axx * u + axy * v
    by = _box(iy * it - gxy * u - gyy * v, window) + axy * u + ayy * v
    du = -((ayy + lam) * bx - axy * by) / det
    dv = -((axx + lam) * by - axy * bx) / det
    return flow + jnp.stack([du, dv], axis=-1)

  return jax.lax.fori_loop(0, iters, step, flow)  # static trip count: a scan, reverse-differentiable


def lucas_kanade(img_a: jax.Array, img_b: jax.Array, levels: int = 3, iters: int = 2, window: int = 7,
                 eps: float = 1e-2) -> jax.Array:
  """Dense pyramidal Lucas-Kanade flow from grey image a to grey image b (differentiable w.r.t. both).

  Pyramid of 2 x 2 average pools; from the coarsest level to the finest (flow upsampled bilinearly and doubled
  between levels), ``iters`` times: warp b by the current flow (bilinear, border clamp), ``It = b(x + u(x)) -
  a(x)``, spatial gradients ``g = (Ix, Iy)`` of a (central differences), and per pixel x the closed-form solve of
  the window's (window x window box, zero beyond the border) least squares ``(A + lambda 1) du = -mean_y g(y)
  (It(y) + g(y) . (u(x) - u(y)))``, ``A = mean_y g g^T``, ``u(x) += du``. Each window pixel's residual is moved
  (to first order) from its own flow to the centre's, as in classical per-window LK: exact for a translating
  window even where the current flow field is rough (warping by the dense flow alone drifts over iterations).
  The ridge ``lambda = eps * mean_pixels(Ix^2 + Iy^2) + 1e-9`` per image and level is relative to the image's
  gradient energy (the flow does not depend on the intensity scale); it damps the increments where the
  structure tensor is weak (flat or edge-only windows) and does not move the fixed point. Constant images give
  zero flow (and finite gradients).

  Args:
    img_a, img_b: (B, H, W) grey images (e.g. ``photometric.to_gray``), H, W >= 2^(levels - 1).
    levels: pyramid levels (1: no pyramid); the coarsest sees displacements / 2^(levels - 1).
    iters: warp-and-solve iterations per level.
    window: side of the box window of the structure tensor (odd).
    eps: relative ridge.
  Returns:
    (B, H, W, 2) float32 flow ``(u, v)`` in pixels, ``img_b(x + u) ~ img_a(x)``.
  """
  a = jnp.asarray(img_a).astype(jnp.float32)
  b = jnp.asarray(img_b).astype(jnp.float32)
  pyr = [(a, b)]
  for _ in range(levels - 1):
    pyr.append((_pool2(pyr[-1][0]), _pool2(pyr[-1][1])))
  flow = None
  for la, lb in reversed(pyr):
    n, h, w = la.shape
    flow = jnp.zeros((n, h, w, 2), jnp.float32) if flow is None else _upsample_flow(flow, h, w)
    flow = _refine(la, lb, flow, iters, window, eps)
  return flow


def flow_loss(flow: jax.Array, weights: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Lf (Eq. 10) without ``lambda_f``: ``sum |w| * W / max(sum W, 1e-6)``, a ratio of sums over the whole batch.

  ``|w|`` is the flow's Euclidean magnitude, smoothed as ``sqrt(u^2 + v^2 + eps)`` (``eps = 1e-6``, i.e. 1e-3 px
  at zero flow) so that the gradient is finite (zero) at zero flow.

  Args:
    flow: (B, H, W, 2) in pixels.
    weights: (B, H, W) region weights ``W`` (zero outside the face).
  Returns scalar float32 (pixels).
  """
  flow = jnp.asarray(flow, jnp.float32)
  mag = jnp.sqrt(jnp.sum(jnp.square(flow), axis=-1) + eps)
  w = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), mag.shape)
  return jnp.sum(mag * w) / jnp.maximum(jnp.sum(w), 1e-6)
