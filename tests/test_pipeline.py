"""jface.data.augment and jface.data.pipeline: geometric consistency, determinism, resume, bad examples."""
from __future__ import annotations

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.data import augment as aug
from jface.data import pipeline as pl
from jface.core.face_model import FaceModel
from jface.core import geometry as g

S = 120


def random_model(seed=0) -> FaceModel:
  """A tiny BFM-shaped model with realistic magnitudes (no data needed)."""
  rng = np.random.default_rng(seed)
  mean = np.array([4e-4, 0, 0, 60, 0, 4e-4, 0, 70, 0, 0, 4e-4, -75] + [0] * 50, np.float32)
  std = np.array([2e-4, 3e-4, 3e-4, 20, 2.5e-4, 2e-4, 2e-4, 15, 3.6e-4, 1e-4, 1.5e-4, 18]
                 + [3e5 * 0.95 ** i for i in range(40)] + [1.5 * 0.9 ** i for i in range(10)], np.float32)
  f = lambda a: jnp.asarray(a, jnp.float32)
  return FaceModel(u_base=f(rng.normal(size=204) * 6e4), w_shp_base=f(rng.normal(size=(204, 40)) * 0.02),
                           w_exp_base=f(rng.normal(size=(204, 10)) * 500), param_mean=f(mean),
                           param_std=f(std), name="random").check()


@pytest.fixture(scope="module")
def model():
  return random_model()


@pytest.fixture(scope="module")
def lmk3d():
  return jax.jit(g.landmarks3d)


def np_landmarks2d(model, pw):
  """Plain numpy H(.): whitened (n, 62) -> (n, 68, 2) crop coords."""
  p = np.asarray(pw, np.float64) * np.asarray(model.param_std) + np.asarray(model.param_mean)
  shape = (np.asarray(model.u_base, np.float64) + p[:, 12:52] @ np.asarray(model.w_shp_base, np.float64).T
           + p[:, 52:62] @ np.asarray(model.w_exp_base, np.float64).T).reshape(len(p), 68, 3)
  pose = p[:, :12].reshape(-1, 3, 4)
  v = np.einsum("nij,nkj->nki", pose[:, :2, :3], shape) + pose[:, None, :2, 3]
  return np.stack([v[..., 0], 121 - v[..., 1]], axis=-1).astype(np.float32)


class FakeSource:
  """In-memory source: example i has a random image, params pw_i and landmarks = landmarks2d(pw_i)."""

  def __init__(self, model, n=10, bad=(), seed=0):
    rng = np.random.default_rng(seed)
    self.pw = (rng.normal(size=(n, 62)) * 0.5).astype(np.float32)
    self.lmk = np_landmarks2d(model, self.pw)
    self.images = rng.integers(0, 256, size=(n, S, S, 3), dtype=np.uint8)
    self.bad = set(bad)

  def __len__(self):
    return len(self.pw)

  def __getitem__(self, i):
    if i in self.bad:
      raise OSError(f"corrupt file img{i:03d}.jpg\n(second line)")
    return dict(image=self.images[i], params=self.pw[i], has_params=True, landmarks=self.lmk[i],
                landmarks_mask=np.arange(68) % 7 != 0, roi_box=np.array([0, 0, S, S], np.float32),
                yaw=np.float32(i), source="fake", name=f"img{i:03d}")


@pytest.fixture(scope="module")
def source(model):
  return FakeSource(model, n=10)


def assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------------------------------ augment

def _check_params_follow_affine(model, lmk3d, seed, n=16):
  rng = np.random.default_rng(seed)
  pw = rng.normal(size=(n, 62)).astype(np.float32)
  affines = [aug.sample_affine(rng, aug.AugmentConfig()) for _ in range(n)]
  pw2 = np.stack([aug.transform_params(model, p, a) for p, a in zip(pw, affines)])
  l1 = np.asarray(lmk3d(model, jnp.asarray(pw)), np.float64)
  l2 = np.asarray(lmk3d(model, jnp.asarray(pw2)), np.float64)
  for a, x, y in zip(affines, l1, l2):
    np.testing.assert_allclose(y[:, :2], x[:, :2] @ a[:, :2].T + a[:, 2], atol=1e-3)
    k = np.sqrt(abs(np.linalg.det(a[:, :2])))
    np.testing.assert_allclose(y[:, 2], k * x[:, 2], atol=1e-3 * max(1.0, np.abs(x[:, 2]).max() / 100))


def test_params_follow_affine_random_model(model, lmk3d):
  _check_params_follow_affine(model, lmk3d, seed=1)


@pytest.mark.shared_data
def test_params_follow_affine_bfm(bfm, lmk3d):
  _check_params_follow_affine(bfm, lmk3d, seed=2)


def test_scaled_rotation_stays_scaled_rotation(model):
  """fR = f R  ->  fR' = k f Rz(theta) R: counter-clockwise as displayed is counter-clockwise with y up."""
  R = np.asarray(g.angles_to_matrix(jnp.array([30.0, -10.0, 5.0])), np.float64)
  p = np.asarray(model.param_mean, np.float64).copy()
  p[:12] = np.concatenate([7e-4 * R, [[50.0], [70.0], [-80.0]]], axis=1).reshape(12)
  pw = (p - np.asarray(model.param_mean)) / np.asarray(model.param_std)
  a = aug.similarity_affine(20.0, 1.1, (3.0, -4.0))
  p2 = np.asarray(g.dewhiten(model, jnp.asarray(aug.transform_params(model, pw, a))), np.float64)
  fr2 = p2[:12].reshape(3, 4)[:, :3]
  th = np.radians(20.0)
  rz = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
  np.testing.assert_allclose(fr2, 1.1 * 7e-4 * rz @ R, rtol=1e-4, atol=1e-9)
  ang = np.asarray(g.matrix_to_angles(jnp.asarray(rz @ R)))
  np.testing.assert_allclose(ang[:2], [30.0, -10.0], atol=1e-3)  # yaw, pitch unchanged; roll moves


def test_affine_conventions():
  a = aug.similarity_affine(0.0, 1.0, (0.0, 0.0))
  np.testing.assert_allclose(a, [[1, 0, 0], [0, 1, 0]], atol=1e-12)
  a = aug.similarity_affine(90.0, 2.0, (1.0, 2.0), size=120)
  # The centre (60.5, 60.5) only moves by the shift; +90 deg turns "right" (+x) into "up" (-y) on screen.
  np.testing.assert_allclose(aug.transform_points(a, np.array([[60.5, 60.5], [61.5, 60.5]])),
                             [[61.5, 62.5], [61.5, 60.5]], atol=1e-5)
  # Pixel-space map: pixel centre (u, v) = (x - 1, y - 1).
  pa = aug.pixel_affine(a)
  x = np.array([[10.0, 20.0]])
  np.testing.assert_allclose(aug.transform_points(pa, x - 1) + 1, aug.transform_points(a, x), atol=1e-5)
  # Camera-space map: v = (x, 121 - y).
  ca = aug.camera_affine(a)
  v = np.array([[x[0, 0], 121 - x[0, 1]]])
  y = aug.transform_points(a, x)
  np.testing.assert_allclose(aug.transform_points(ca, v), [[y[0, 0], 121 - y[0, 1]]], atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bright_pixel_lands_on_transformed_landmark(seed):
  rng = np.random.default_rng(seed)
  a = aug.sample_affine(rng, aug.AugmentConfig())
  r, c = rng.integers(45, 75, size=2)
  img = np.zeros((S, S, 3), np.uint8)
  img[r, c] = 255
  x = aug.transform_points(a, np.array([[c + 1.0, r + 1.0]]))[0]
  out = aug.warp_image(img, a, "constant")
  rr, cc = np.unravel_index(np.argmax(out[..., 0]), (S, S))
  assert abs(cc + 1 - x[0]) <= 1 and abs(rr + 1 - x[1]) <= 1
  # Sub-pixel: the centroid of a smooth blob follows the map.
  yy, xx = np.mgrid[1:S + 1, 1:S + 1]
  blob = 250 * np.exp(-((xx - c - 1.3) ** 2 + (yy - r - 1.6) ** 2) / (2 * 2.5 ** 2))
  w = aug.warp_image(np.repeat(blob[..., None], 3, -1).round().astype(np.uint8), a, "constant")[..., 0]
  w = w.astype(np.float64)
  got = [(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()]
  np.testing.assert_allclose(got, aug.transform_points(a, np.array([[c + 1.3, r + 1.6]]))[0], atol=0.1)


def test_augment_example_consistent(model, lmk3d, source):
  cfg = aug.AugmentConfig(border="random")
  ex = source[3]
  outs = [aug.augment(ex, np.random.default_rng(s), model, cfg) for s in range(6)]
  pw2 = jnp.asarray(np.stack([o["params"] for o in outs]))
  got = np.asarray(lmk3d(model, pw2))[..., :2]
  for o, l in zip(outs, got):
    np.testing.assert_allclose(o["landmarks"], l, atol=1e-3)
    chex.assert_shape(o["image"], (S, S, 3))
    assert o["image"].dtype == np.uint8 and o["params"].dtype == np.float32 and o["landmarks"].dtype == np.float32
    np.testing.assert_array_equal(o["landmarks_mask"], ex["landmarks_mask"])
    assert o["name"] == ex["name"] and o["yaw"] == ex["yaw"]
  assert not np.array_equal(outs[0]["image"], outs[1]["image"])
  # Same generator state -> same output; the input example is untouched.
  again = aug.augment(ex, np.random.default_rng(0), model, cfg)
  for k in outs[0]:
    np.testing.assert_array_equal(np.asarray(again[k]), np.asarray(outs[0][k]))
  np.testing.assert_array_equal(ex["image"], source.images[3])
  np.testing.assert_array_equal(ex["params"], source.pw[3])


def test_augment_without_params_and_disabled(source):
  ex = dict(source[0], params=np.zeros(62, np.float32), has_params=False)
  out = aug.augment(ex, np.random.default_rng(0), None, aug.AugmentConfig())
  np.testing.assert_array_equal(out["params"], 0)
  assert not np.allclose(out["landmarks"], ex["landmarks"])
  same = aug.augment(ex, np.random.default_rng(0), None, aug.AugmentConfig(enabled=False))
  for k in ex:
    np.testing.assert_array_equal(np.asarray(same[k]), np.asarray(ex[k]))
  with pytest.raises(ValueError, match="FaceModel"):
    aug.augment(source[0], np.random.default_rng(0), None, aug.AugmentConfig())
  with pytest.raises(ValueError, match="uint8"):
    aug.augment(dict(ex, image=np.zeros((S, S), np.uint8)), np.random.default_rng(0), None)


def test_config_validation():
  with pytest.raises(ValueError, match="scale_range"):
    aug.AugmentConfig(scale_range=(1.2, 0.9))
  with pytest.raises(ValueError, match="border"):
    aug.AugmentConfig(border="wrap")
  with pytest.raises(ValueError, match="occlusion_prob"):
    aug.AugmentConfig(occlusion_prob=2.0)
  assert aug.AugmentConfig(scale_range=[0.5, 1.0]).scale_range == (0.5, 1.0)


def test_scale_colors_range():
  img = np.random.default_rng(0).integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
  f = np.array([0.6, 1.0, 1.4])
  out = aug.scale_colors(img, f)
  assert out.dtype == np.uint8 and out.shape == img.shape
  np.testing.assert_array_equal(out, np.clip(np.floor(img * f + 0.5), 0, 255).astype(np.uint8))
  assert out[..., 2].max() == 255 and out[..., 1].tolist() == img[..., 1].tolist()


@pytest.mark.parametrize("seed", range(6))
def test_occlusion_only_inside_box(seed):
  rng = np.random.default_rng(seed)
  img = np.full((S, S, 3), 7, np.uint8)
  out, (r0, c0, r1, c1) = aug.occlude(img, rng, (0.02, 0.25))
  assert 0 <= r0 < r1 <= S and 0 <= c0 < c1 <= S
  assert (r1 - r0) * (c1 - c0) <= 0.25 * S * S * 1.05
  inside = np.zeros((S, S), bool)
  inside[r0:r1, c0:c1] = True
  np.testing.assert_array_equal(out[~inside], img[~inside])
  assert (out[inside] != 7).any()
  np.testing.assert_array_equal(img, 7)


# -------------------------------------------------------------------------------------------- Loader

def make_loader(model, src, seed=0, **kw):
  kw.setdefault("augment_cfg", aug.AugmentConfig())
  return pl.Loader(src, 4, seed, model=model, **kw)


def test_batch_shapes_and_dtypes(model, source):
  b = make_loader(model, source, landmark_noise_px=1.0).batch(0)
  chex.assert_shape(b["image"], (4, S, S, 3))
  chex.assert_shape([b["params"], b["landmarks"], b["flm_landmarks"], b["landmarks_mask"], b["roi_box"]],
                    [(4, 62), (4, 68, 2), (4, 68, 2), (4, 68), (4, 4)])
  chex.assert_shape([b["yaw"], b["has_params"], b["name"], b["source"]], [(4,)] * 4)
  assert b["image"].dtype == np.uint8 and b["landmarks_mask"].dtype == bool and b["has_params"].dtype == bool
  chex.assert_type([b["params"], b["landmarks"], b["flm_landmarks"], b["yaw"]], np.float32)
  assert b["name"].dtype.kind == "U" and set(pl.numeric(b)) == set(b) - {"name", "source"}


def test_determinism(model, source):
  loader = make_loader(model, source)
  first = loader.batch(5)
  for s in (0, 1, 2, 7):
    loader.batch(s)
  assert_batches_equal(first, loader.batch(5))
  assert_batches_equal(first, make_loader(model, source).batch(5))
  other = make_loader(model, source, seed=1).batch(5)
  assert not np.array_equal(other["image"], first["image"])
  assert not np.array_equal(loader.batch(6)["image"], first["image"])


def test_epoch_covers_every_index_once(model, source):
  loader = pl.Loader(source, 3, seed=3, shuffle=True, drop_remainder=False)
  assert loader.steps_per_epoch == 4
  names = [list(loader.batch(s)["name"]) for s in range(8)]
  assert [len(n) for n in names] == [3, 3, 3, 1] * 2
  e0, e1 = sum(names[:4], []), sum(names[4:], [])
  assert sorted(e0) == sorted(e1) == [f"img{i:03d}" for i in range(10)]
  assert e0 != e1
  ordered = pl.Loader(source, 5, seed=3, shuffle=False)
  assert list(ordered.batch(1)["name"]) == [f"img{i:03d}" for i in range(5, 10)]


def test_resume_equals_tail(model, source):
  loader = make_loader(model, source, landmark_noise_px=2.0, num_threads=2, prefetch=2)
  full = list(loader.iter_from(0, num_steps=7))
  tail = list(make_loader(model, source, landmark_noise_px=2.0).iter_from(3, num_steps=4))
  for a, b in zip(full[3:], tail):
    assert_batches_equal(a, b)
  for s in (0, 6):
    assert_batches_equal(full[s], loader.batch(s))
  it = loader.iter_from(2)
  assert_batches_equal(next(it), full[2])
  it.close()


def test_landmark_noise_only_on_flm_landmarks(model, source):
  clean = make_loader(model, source).batch(1)
  noisy = make_loader(model, source, landmark_noise_px=2.0).batch(1)
  for k in ("image", "params", "landmarks"):
    np.testing.assert_array_equal(clean[k], noisy[k])
  np.testing.assert_array_equal(clean["flm_landmarks"], clean["landmarks"])
  d = noisy["flm_landmarks"] - noisy["landmarks"]
  assert 1.5 < d.std() < 2.5


def test_bad_examples_skipped_and_reported_once(model, caplog):
  src = FakeSource(model, n=10, bad=(2, 3, 7))
  loader = make_loader(model, src, shuffle=True, drop_remainder=False)
  with caplog.at_level(logging.WARNING, logger="jface.data.pipeline"):
    batches = list(loader.iter_from(0, num_steps=3 * loader.steps_per_epoch))
  names = np.concatenate([b["name"] for b in batches])
  assert len(names) == 30 and not {"img002", "img003", "img007"} & set(names)
  assert loader.stats == {"examples": 30, "bad": 3, "replaced": 9}
  msgs = [r.getMessage() for r in caplog.records]
  assert len(msgs) == 3 and all("\n" not in m for m in msgs)
  assert sorted(loader.bad_indices) == [2, 3, 7] and "img007.jpg" in loader.bad_indices[7]
  # Replacement is deterministic: a fresh loader gives the same batches.
  assert_batches_equal(batches[4], make_loader(model, src, drop_remainder=False).batch(4))


def test_all_bad_raises_and_bad_args(model):
  with pytest.raises(RuntimeError, match="all 4 examples"):
    pl.Loader(FakeSource(model, n=4, bad=range(4)), 2, 0).batch(0)
  with pytest.raises(ValueError, match="fewer than one batch"):
    pl.Loader(FakeSource(model, n=3), 4, 0)


def test_contract_violation_is_skipped(model):
  class Broken(FakeSource):
    def __getitem__(self, i):
      ex = super().__getitem__(i)
      return dict(ex, image=ex["image"][..., 0]) if i == 1 else ex
  loader = pl.Loader(Broken(model, n=4), 4, 0, shuffle=False)
  assert list(loader.batch(0)["name"]) == ["img000", "img002", "img002", "img003"]
  assert "uint8" in loader.bad_indices[1]
