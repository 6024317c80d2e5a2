"""jface.methods.pgn.{render, photometric, flow}: numpy references, closed forms, round trips and gradients."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.core import uv as uv_lib
from jface.methods.pgn import flow as F
from jface.methods.pgn import photometric as P
from jface.methods.pgn import render as R


def np_bilinear(img, pts):
  """Reference: img (H, W, C), pts (K, 2) 0-based (x, y), border clamp -> (K, C)."""
  h, w = img.shape[:2]
  out = []
  for x, y in np.asarray(pts, np.float64):
    x, y = min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    out.append((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x1])
               + fy * ((1 - fx) * img[y1, x0] + fx * img[y1, x1]))
  return np.array(out)


def smooth_texture(n, sigma, seed=0):
  """(n, n) low-pass Gaussian noise (Gaussian filter of std sigma px, periodic) scaled to [0, 255], float32."""
  rng = np.random.default_rng(seed)
  k = np.fft.fftfreq(n)
  g = np.exp(-0.5 * (k[:, None] ** 2 + k[None, :] ** 2) * (2 * np.pi * sigma) ** 2)
  tex = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * g))
  return ((tex - tex.min()) / (tex.max() - tex.min()) * 255).astype(np.float32)


def shift(img, s):
  """Differentiable bilinear shift of grey images (B, H, W) by s = (sx, sy): out(x) = img(x - s)."""
  _, h, w = img.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  pts = jnp.stack([xs - s[0], ys - s[1]], axis=-1).reshape(1, h * w, 2)
  pts = jnp.broadcast_to(pts, (img.shape[0], h * w, 2))
  return uv_lib.sample_map(img[..., None], pts)[..., 0].reshape(img.shape)


def fd_grad(f, x, h=1e-2):
  """Central finite differences of a scalar function of a float array (evaluated in float32)."""
  x = np.asarray(x, np.float32)
  g = np.zeros(x.shape, np.float64)
  for i in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[i] += h
    xm[i] -= h
    g[i] = (float(f(jnp.asarray(xp))) - float(f(jnp.asarray(xm)))) / (2 * h)
  return g


# -------------------------------------------------------------------------------------------------- render

def test_sample_image_matches_reference_and_is_one_based():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, size=(2, 5, 7, 3)).astype(np.uint8)
  pts = rng.uniform(-1.0, 9.0, size=(2, 11, 2)).astype(np.float32)
  out = R.sample_image(img, pts)
  chex.assert_shape(out, (2, 11, 3))
  chex.assert_type(out, jnp.float32)
  for b in range(2):
    np.testing.assert_allclose(out[b], np_bilinear(img[b].astype(np.float64), pts[b] - 1.0), rtol=1e-5, atol=1e-3)
  # pixel centres: (c + 1, r + 1) -> img[r, c] exactly
  rs, cs = np.meshgrid(np.arange(5), np.arange(7), indexing="ij")
  centres = np.stack([cs.ravel() + 1, rs.ravel() + 1], -1).astype(np.float32)
  out = R.sample_image(img, np.broadcast_to(centres, (2,) + centres.shape))
  np.testing.assert_array_equal(np.asarray(out), img.reshape(2, -1, 3).astype(np.float32))


def test_sample_image_gradient_matches_finite_differences():
  rng = np.random.default_rng(1)
  img = jnp.asarray(rng.uniform(0, 1, size=(1, 6, 6, 2)), jnp.float32)
  pts = np.array([[[2.3, 3.6], [4.7, 2.2]]], np.float32)
  proj = jnp.asarray(rng.normal(size=(1, 2, 2)), jnp.float32)
  f = jax.jit(lambda p: jnp.sum(R.sample_image(img, p) * proj))
  g = jax.grad(f)(jnp.asarray(pts))
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  np.testing.assert_allclose(g, fd_grad(f, pts), rtol=2e-2, atol=2e-3)


def test_splat_integer_point_lands_on_its_pixel():
  img, cov = R.splat(np.array([[[3.0, 2.0]]], np.float32), np.array([[[5.0, -2.0]]], np.float32),
                     np.ones((1, 1), np.float32), 4, 5)
  chex.assert_shape([img, cov], [(1, 4, 5, 2), (1, 4, 5)])
  chex.assert_type([img, cov], jnp.float32)
  want_cov = np.zeros((1, 4, 5))
  want_cov[0, 1, 2] = 1.0  # (x, y) = (3, 2) is array pixel [1, 2]
  np.testing.assert_allclose(cov, want_cov, atol=1e-7)
  np.testing.assert_allclose(img[0, 1, 2], [5.0, -2.0], rtol=1e-6)
  np.testing.assert_allclose(np.abs(np.asarray(img)).sum(), 7.0, rtol=1e-6)


def test_splat_half_pixel_splits_equally_and_outside_points_vanish():
  pts = np.array([[[2.5, 2.0], [2.5, 3.5], [-3.0, 2.0], [9.0, 9.0]]], np.float32)
  vals = np.array([[[1.0], [2.0], [7.0], [7.0]]], np.float32)
  w = np.array([[1.0, 0.8, 1.0, 1.0]], np.float32)
  img, cov = R.splat(pts, vals, w, 5, 5)
  want = np.zeros((5, 5))
  want[1, 1] = want[1, 2] = 0.5  # first point: halves on [1, 1], [1, 2]
  want[2:4, 1:3] = 0.2  # second: quarters of 0.8 on [2..3, 1..2]
  np.testing.assert_allclose(cov[0], want, atol=1e-7)
  np.testing.assert_allclose(img[0, 1, 1:3, 0], [1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(img[0, 2:4, 1:3, 0], np.full((2, 2), 2.0), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(img)[0, want == 0], 0.0)


def test_splat_of_sampled_points_composites_back_to_the_image():
  """Dense (half-pixel) offset grid -> colours sampled from a smooth image -> splat -> composite = the image."""
  b, h, w = 2, 24, 20
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
  img = np.stack([100 + 40 * np.sin(xs / 5 + k) * np.cos(ys / 7) + 2 * xs - ys for k in range(3)], -1)
  imgs = np.stack([img, img[:, ::-1] * 0.5]).astype(np.float32)  # (B, H, W, 3)
  gy, gx = np.mgrid[0.8:h + 1:0.5, 0.65:w + 1:0.5]
  pts = np.broadcast_to(np.stack([gx.ravel(), gy.ravel()], -1), (b, gx.size, 2)).astype(np.float32)
  vals = R.sample_image(imgs, pts)
  rendered, cov = jax.jit(R.splat, static_argnums=(3, 4))(pts, vals, jnp.ones(pts.shape[:2]), h, w)
  out = R.composite(rendered, cov, jnp.zeros_like(imgs))
  chex.assert_shape(out, imgs.shape)
  inner = (slice(None), slice(2, -2), slice(2, -2))
  np.testing.assert_allclose(cov[inner], 1.0)
  np.testing.assert_allclose(out[inner], imgs[inner], atol=1.0)  # curvature of the smooth image, ~0.5 % of range
  assert np.abs(np.asarray(out[inner]) - imgs[inner]).mean() < 0.2
  # composite: the background shows where coverage is 0, blends where partial
  bg = jnp.full_like(imgs, 7.0)
  cov2 = jnp.zeros((b, h, w)).at[:, 0, 0].set(0.25)
  np.testing.assert_allclose(R.composite(rendered, cov2, bg)[:, 1:, 1:], 7.0)
  np.testing.assert_allclose(R.composite(rendered, cov2, bg)[:, 0, 0], 0.25 * rendered[:, 0, 0] + 0.75 * 7.0,
                             rtol=1e-6)


def test_splat_gradients_match_finite_differences():
  pts = np.array([[[2.3, 2.6], [3.2, 2.4], [2.7, 3.3]]], np.float32)
  vals = np.array([[[10.0, 1.0], [-4.0, 3.0], [6.0, -2.0]]], np.float32)
  wts = np.array([[1.0, 0.7, 0.4]], np.float32)
  rng = np.random.default_rng(2)
  pattern = jnp.asarray(rng.normal(size=(1, 5, 5, 2)), jnp.float32)
  bg = jnp.asarray(rng.normal(size=(1, 5, 5, 2)), jnp.float32)

  def loss(p, v, w):
    img, cov = R.splat(p, v, w, 5, 5)
    return jnp.sum(R.composite(img, cov, bg) * pattern)

  f = jax.jit(loss)
  gp, gv, gw = jax.grad(f, argnums=(0, 1, 2))(jnp.asarray(pts), jnp.asarray(vals), jnp.asarray(wts))
  for g in (gp, gv, gw):
    assert np.all(np.isfinite(g)) and np.abs(g).min() > 0
  np.testing.assert_allclose(gp, fd_grad(lambda p: f(p, vals, wts), pts, 1e-3), rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(gv, fd_grad(lambda v: f(pts, v, wts), vals), rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(gw, fd_grad(lambda w: f(pts, vals, w), wts, 1e-3), rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------------------------- photometric

def test_to_gray_bt601():
  img = np.array([[[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]]], np.uint8)
  g = P.to_gray(img)
  chex.assert_shape(g, (1, 2, 2))
  chex.assert_type(g, jnp.float32)
  np.testing.assert_allclose(g[0], [[0.299 * 255, 0.587 * 255], [0.114 * 255, 2.99 + 11.74 + 3.42]], rtol=1e-5)
  np.testing.assert_allclose(P.to_gray(img / 255.0), g / 255.0, rtol=1e-5)


@pytest.mark.parametrize("patch", [3, 5])
def test_census_transform_matches_loop(patch):
  rng = np.random.default_rng(3)
  gray = rng.uniform(0, 255, size=(2, 6, 5)).astype(np.float32)
  t = P.census_transform(gray, patch)
  chex.assert_shape(t, (2, 6, 5, patch * patch - 1))
  chex.assert_type(t, jnp.float32)
  r = patch // 2
  want = np.zeros(t.shape)
  for b in range(2):
    for y in range(6):
      for x in range(5):
        k = 0
        for dy in range(-r, r + 1):
          for dx in range(-r, r + 1):
            if dy == dx == 0:
              continue
            d = float(gray[b, min(max(y + dy, 0), 5), min(max(x + dx, 0), 4)]) - float(gray[b, y, x])
            want[b, y, x, k] = d / np.sqrt(0.81 + d * d)
            k += 1
  np.testing.assert_allclose(t, want, rtol=1e-5, atol=1e-6)
  # soft Hamming against the loop too
  t2 = P.census_transform(gray[::-1], patch)
  d = np.asarray(t, np.float64) - np.asarray(t2, np.float64)
  np.testing.assert_allclose(P.soft_hamming(t, t2), np.sum(d * d / (0.1 + d * d), -1), rtol=1e-5, atol=1e-5)


def test_census_hard_limit():
  gray = np.zeros((1, 3, 3), np.float32)
  gray[0, 0, 0], gray[0, 2, 2] = 200.0, -150.0
  t = np.asarray(P.census_transform(gray, 3))[0, 1, 1]
  # offsets (-1, -1) and (1, 1): large differences -> the sign; the others: diff 0 -> 0
  np.testing.assert_allclose(t[0], 1.0, atol=2e-5)
  np.testing.assert_allclose(t[-1], -1.0, atol=2e-5)
  np.testing.assert_allclose(t[1:-1], 0.0, atol=1e-7)
  diffs = np.array([1.0, 5.0, 30.0, 255.0])
  g = np.zeros((1, 1, 2), np.float32)
  errs = []
  for d in diffs:
    g[0, 0, 1] = d
    errs.append(1.0 - float(P.census_transform(g, 3)[0, 0, 0, 4]))  # offset (0, 1)
  assert np.all(np.diff(errs) < 0) and errs[-1] < 1e-5


def test_census_loss_brightness_invariance_and_l1():
  b, h, w = 2, 20, 24
  rng = np.random.default_rng(4)
  img = np.stack([smooth_texture(24, 2.0, s)[:h] for s in range(3 * b)]).reshape(b, 3, h, w).transpose(0, 2, 3, 1)
  img = img * 0.8  # in [0, 204]
  mask = np.ones((b, h, w), np.float32)
  mask[:, :3] = 0.0
  wts = rng.choice([1.0, 5.0], size=(b, h, w)).astype(np.float32)
  loss = jax.jit(P.census_loss)
  zero = loss(img, img, mask, wts)
  chex.assert_shape(zero, ())
  chex.assert_type(zero, jnp.float32)
  assert float(zero) == 0.0
  assert float(loss(img, img + 30.0, mask, wts)) < 1e-4
  np.testing.assert_allclose(P.photometric_l1(img, img + 30.0, mask, wts), 30.0, rtol=1e-5)
  # a [0, 1] image with scale=255 is the [0, 255] one
  other = np.roll(img, 2, axis=2)
  ref = float(loss(img, other, mask, wts))
  assert ref > 1.0
  np.testing.assert_allclose(P.census_loss(img / 255, other / 255, mask, wts, scale=255.0), ref, rtol=1e-4)
  # ratio of sums over the batch, against the per-pixel Hamming distances
  ham = np.asarray(P.soft_hamming(P.census_transform(P.to_gray(img)), P.census_transform(P.to_gray(other))))
  np.testing.assert_allclose(ref, (ham * mask * wts).sum() / (mask * wts).sum(), rtol=1e-5)
  l1 = np.abs(img - other).mean(-1)
  np.testing.assert_allclose(P.photometric_l1(img, other, mask, wts), (l1 * mask * wts).sum() / (mask * wts).sum(),
                             rtol=1e-5)
  # all-zero mask: finite 0
  assert float(P.census_loss(img, other, 0 * mask, wts)) == 0.0


# ---------------------------------------------------------------------------------------------------- flow

N = 64
S = (1.5, -0.75)
INNER = (slice(None), slice(12, -12), slice(12, -12))


@pytest.fixture(scope="module")
def texture():
  return jnp.asarray(np.stack([smooth_texture(N, 3.0, 0), smooth_texture(N, 4.0, 1)]))  # (2, 64, 64)


@pytest.fixture(scope="module")
def lk():
  return jax.jit(F.lucas_kanade)


def shifted_flow_loss(img, s, w):
  """Lf between grey images (B, H, W) and their bilinear shift by s: ~|s| where weighted."""
  return F.flow_loss(F.lucas_kanade(img, shift(img, s)), w)


@pytest.fixture(scope="module")
def loss_and_grad():
  return jax.jit(jax.value_and_grad(shifted_flow_loss, argnums=1))


def inner_weights(b=2):
  w = np.zeros((b, N, N), np.float32)
  w[INNER] = 1.0
  return w


def test_lucas_kanade_recovers_subpixel_translation(texture, lk):
  flow = lk(texture, shift(texture, jnp.asarray(S)))
  chex.assert_shape(flow, (2, N, N, 2))
  chex.assert_type(flow, jnp.float32)
  err = np.linalg.norm(np.asarray(flow[INNER]) - np.asarray(S), axis=-1)
  assert np.median(err) < 0.15, np.median(err)
  assert np.all(np.isfinite(np.asarray(flow)))


def test_lucas_kanade_zero_and_constant(texture, lk, loss_and_grad):
  np.testing.assert_allclose(lk(texture, texture), 0.0, atol=1e-6)
  flat = jnp.full((2, N, N), 80.0, jnp.float32)
  np.testing.assert_allclose(lk(flat, flat + 20.0), 0.0, atol=1e-6)
  val, g = loss_and_grad(flat, jnp.asarray(S), inner_weights())
  np.testing.assert_allclose(val, 1e-3, rtol=1e-3)  # the magnitude's epsilon only
  np.testing.assert_array_equal(g, 0.0)


def test_flow_loss_closed_form():
  flow = np.zeros((2, 3, 4, 2), np.float32)
  flow[0, 1, 1] = (3.0, 4.0)
  flow[1, 2, 3] = (-1.0, 0.0)
  w = np.ones((2, 3, 4), np.float32)
  w[1] = 2.0
  loss = F.flow_loss(flow, w)
  chex.assert_shape(loss, ())
  chex.assert_type(loss, jnp.float32)
  mag = np.sqrt((flow.astype(np.float64) ** 2).sum(-1) + 1e-6)
  np.testing.assert_allclose(loss, (mag * w).sum() / w.sum(), rtol=1e-6)
  np.testing.assert_allclose(loss, (5.0 + 2.0 * 1.0 + 1e-3 * (11 + 2 * 11)) / 36.0, rtol=1e-5)
  g = jax.grad(F.flow_loss)(jnp.zeros((1, 2, 2, 2)), jnp.ones((1, 2, 2)))
  np.testing.assert_array_equal(g, 0.0)


def test_flow_loss_gradient_reduces_the_shift(texture, loss_and_grad):
  val, g = loss_and_grad(texture, jnp.asarray(S), inner_weights())
  g = np.asarray(g)
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(val, np.hypot(*S), atol=0.15)  # loss ~ |s|
  np.testing.assert_array_equal(np.sign(g), np.sign(S))  # descent shrinks |s|
  cos = g @ np.asarray(S) / (np.linalg.norm(g) * np.hypot(*S))
  assert cos > 0.9, (g, cos)
