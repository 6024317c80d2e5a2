"""jface.core.uv: closed forms on tiny meshes, numpy references, and PRNet's / the BFM's UV assets."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.core import uv as U
from jface.core.face_model import MissingAssetError


def linear(xy, coef=((2.0, -3.0, 5.0), (0.5, 1.0, -7.0))):
  """(N, 2) -> (N, C): each channel a*x + b*y + c."""
  xy = np.asarray(xy, np.float64)
  return np.stack([a * xy[..., 0] + b * xy[..., 1] + c for a, b, c in coef], axis=-1)


def grid_mesh(n, step=1.0, origin=0.0):
  """(n*n, 2) grid vertices (x fastest) and its (2 (n-1)^2, 3) triangles."""
  ys, xs = np.mgrid[0:n, 0:n]
  pts = np.stack([xs.ravel(), ys.ravel()], -1) * step + origin
  vid = np.arange(n * n).reshape(n, n)
  a, b, c, d = vid[:-1, :-1].ravel(), vid[:-1, 1:].ravel(), vid[1:, :-1].ravel(), vid[1:, 1:].ravel()
  return pts.astype(np.float64), np.concatenate([np.stack([a, b, c], -1), np.stack([b, d, c], -1)])


def np_bilinear(m, pts):
  """Reference bilinear sampling with border clamping: m (H, W, C), pts (K, 2) -> (K, C)."""
  h, w = m.shape[:2]
  out = []
  for x, y in np.asarray(pts, np.float64):
    x, y = min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)
    x0, y0 = min(int(np.floor(x)), w - 2), min(int(np.floor(y)), h - 2)
    fx, fy = x - x0, y - y0
    out.append((1 - fy) * ((1 - fx) * m[y0, x0] + fx * m[y0, x0 + 1])
               + fy * ((1 - fx) * m[y0 + 1, x0] + fx * m[y0 + 1, x0 + 1]))
  return np.array(out)


def read_grey(path):
  import cv2
  return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def signed_area(p, tri):
  p0, p1, p2 = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
  return 0.5 * ((p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0]))


# ---------------------------------------------------------------------------------------- closed forms

def test_uv_pixel_coords_corners():
  uv = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5, 0.25]])
  np.testing.assert_allclose(U.uv_pixel_coords(uv, 256), [[0, 255], [255, 0], [0, 0], [127.5, 191.25]])
  np.testing.assert_allclose(U.uv_pixel_coords(uv, 5), [[0, 4], [4, 0], [0, 0], [2, 3]])


def test_keypoint_pixels(tmp_path):
  arr = np.array([[15.0, 22.0, 3.0], [96.0, 118.0, 7.0]])  # (2, K): row 0 = x, row 1 = y
  got = U.keypoint_pixels(arr)
  chex.assert_shape(got, (3, 2))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, [[15, 96], [22, 118], [3, 7]])
  np.savetxt(tmp_path / "uv_kpt_ind.txt", arr)
  np.testing.assert_array_equal(U.keypoint_pixels(tmp_path / "uv_kpt_ind.txt"), got)
  np.testing.assert_array_equal(U.keypoint_pixels(str(tmp_path)), got)  # the folder holding it
  with pytest.raises(ValueError, match="2, K"):
    U.keypoint_pixels(arr.T)


def test_missing_assets_one_line(tmp_path):
  for call, name in ((lambda: U.load_uv_coords(tmp_path), "BFM_UV.mat"),
                     (lambda: U.weight_map(tmp_path), "uv_weight_mask.png"),
                     (lambda: U.keypoint_pixels(tmp_path), "uv_kpt_ind.txt"),
                     (lambda: U.keypoint_pixels(tmp_path / "nope.txt"), "nope.txt")):
    with pytest.raises(MissingAssetError) as e:
      call()
    assert name in str(e.value) and "\n" not in str(e.value)


def test_rasterize_square_linear_exact():
  """Two triangles covering [0, 7]^2 at size 8: every pixel centre is covered and holds the linear function."""
  pts = np.array([[0.0, 0.0], [7.0, 0.0], [0.0, 7.0], [7.0, 7.0]])
  tri = np.array([[0, 1, 2], [1, 3, 2]])
  img, mask = U.rasterize_uv(linear(pts), pts, tri, 8)
  chex.assert_shape([img, mask], [(8, 8, 2), (8, 8)])
  assert img.dtype == np.float32 and mask.dtype == bool and mask.all()
  ys, xs = np.mgrid[0:8, 0:8]
  want = linear(np.stack([xs, ys], -1))
  np.testing.assert_allclose(img, want, rtol=0, atol=1e-5)
  img1, _ = U.rasterize_uv(linear(pts)[:, 0], pts, tri, 8)  # (N,) values: one channel
  np.testing.assert_allclose(img1[..., 0], want[..., 0], rtol=0, atol=1e-5)


def test_rasterize_partial_triangle():
  """A triangle with non-integer corners: covered pixels are exactly the centres inside it (none on an edge
  here), their values the linear function; the rest is 0 and uncovered (the outside touches the border)."""
  pts = np.array([[1.3, 0.6], [8.7, 2.2], [3.1, 9.4]])
  img, mask = U.rasterize_uv(linear(pts), pts, np.array([[0, 1, 2]]), 11)
  ys, xs = np.mgrid[0:11, 0:11]
  p = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
  cross = lambda a, b: a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
  sides = [cross(pts[(i + 1) % 3] - pts[i], p - pts[i]) for i in range(3)]
  inside = (np.all(np.stack(sides) > 0, 0) | np.all(np.stack(sides) < 0, 0)).reshape(11, 11)
  np.testing.assert_array_equal(mask, inside)
  assert 20 < inside.sum() < 40
  np.testing.assert_allclose(img[mask], linear(p.reshape(11, 11, 2)[mask]), rtol=0, atol=1e-5)
  assert np.all(img[~mask] == 0)


def test_fill_holes_enclosed_only_and_linear_exact():
  """A grid mesh with two triangle pairs removed: the enclosed hole is filled with the linear function exactly,
  the notch open to the map border is not."""
  pts, tri = grid_mesh(9, step=2.0)  # covers [0, 16]^2 of a 17 x 17 map
  cell = lambda r, c: (r * 8 + c, 64 + r * 8 + c)  # the two triangles of grid cell (r, c)
  drop = set(cell(3, 3)) | set(cell(3, 4)) | set(cell(0, 7))  # a 2-cell hole inside, a notch on the top edge
  tri = tri[[i for i in range(len(tri)) if i not in drop]]
  vals = linear(pts)
  img0, cov = U.rasterize_uv(vals, pts, tri, 17, fill_holes=False)
  img, mask = U.rasterize_uv(vals, pts, tri, 17)
  hole = np.zeros((17, 17), bool)
  hole[7, 7:10] = True  # the centres strictly inside the removed rectangle x 6..10, y 6..8
  assert not cov[hole].any() and (mask & ~cov).sum() == hole.sum() and mask[hole].all()
  assert not cov[0, 15] and not mask[0, 15]  # the notch reaches the border: left empty
  ys, xs = np.mgrid[0:17, 0:17]
  want = linear(np.stack([xs, ys], -1))
  np.testing.assert_allclose(img[mask], want[mask], rtol=0, atol=1e-5)
  np.testing.assert_array_equal(img[cov], img0[cov])
  filled, holes = U.fill_uv_holes(want[..., 0] * cov, cov)  # (H, W) input
  np.testing.assert_array_equal(holes, hole)
  np.testing.assert_allclose(filled[hole], want[..., 0][hole], atol=1e-9)


def test_fill_prefers_short_gap():
  """A wide flat slit between two rows with different values: the fill follows the columns (lip to lip)."""
  cov = np.ones((7, 30), bool)
  cov[3, 5:25] = False
  img = np.zeros((7, 30))
  img[:3], img[4:] = 10.0, 20.0
  img[3, :5], img[3, 25:] = 100.0, 100.0  # far ends of the slit
  out, holes = U.fill_uv_holes(img, cov)
  assert holes.sum() == 20
  mid = out[3, 15]  # column: 15 over a gap of 2 (weight 1/2^2); row: 100 over a gap of 21 (weight 1/21^2)
  np.testing.assert_allclose(mid, (15.0 / 4 + 100.0 / 441) / (1 / 4 + 1 / 441))


def test_sample_map_vs_numpy_and_batching():
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(2, 3, 6, 9, 4)).astype(np.float32)
  pts = np.stack([rng.uniform(-2, 10, size=(2, 3, 11)), rng.uniform(-2, 7, size=(2, 3, 11))], -1)
  pts[0, 0, 0] = (8.0, 5.0)  # the last pixel centre exactly
  pts = pts.astype(np.float32)
  got = jax.jit(U.sample_map)(maps, pts)
  chex.assert_shape(got, (2, 3, 11, 4))
  chex.assert_type(got, jnp.float32)
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(got[i, j], np_bilinear(maps[i, j], pts[i, j]), rtol=1e-5, atol=1e-5)
  # integer pixel centres give the pixel itself: map[y, x]
  np.testing.assert_array_equal(U.sample_map(maps[0, 0], np.array([[3.0, 2.0], [8.0, 5.0]]))[:, 0],
                                maps[0, 0, [2, 5], [3, 8], 0])
  # one map, a batch of point sets; a batch of maps, one point set
  one = jax.jit(U.sample_map)(maps[0, 0], pts[:, 0])
  chex.assert_shape(one, (2, 11, 4))
  np.testing.assert_allclose(one[1], np_bilinear(maps[0, 0], pts[1, 0]), rtol=1e-5, atol=1e-5)
  chex.assert_shape(U.sample_map(maps, pts[0, 0]), (2, 3, 11, 4))
  # bfloat16 maps keep their dtype (coordinates stay float32); integer maps are sampled in float32
  bf = U.sample_map(jnp.asarray(maps[0, 0], jnp.bfloat16), pts[0, 0])
  chex.assert_type(bf, jnp.bfloat16)
  np.testing.assert_allclose(np.asarray(bf, np.float32), got[0, 0], atol=0.05)
  chex.assert_type(U.sample_map(np.arange(12, dtype=np.uint8).reshape(3, 4, 1), pts[0, 0]), jnp.float32)


def test_sample_map_gradient_is_bilinear_weights():
  m = jnp.zeros((4, 5, 1))
  g = jax.grad(lambda m: U.sample_map(m, jnp.array([[1.25, 2.5]])).sum())(m)
  want = np.zeros((4, 5))
  want[2, 1], want[2, 2], want[3, 1], want[3, 2] = 0.75 * 0.5, 0.25 * 0.5, 0.75 * 0.5, 0.25 * 0.5
  np.testing.assert_allclose(g[..., 0], want, atol=1e-7)


def test_weighted_error_vs_numpy():
  rng = np.random.default_rng(1)
  pred, target = rng.normal(size=(2, 3, 5, 6, 3)).astype(np.float32)
  w = rng.choice([0.0, 3.0, 4.0, 16.0], size=(5, 6)).astype(np.float32)
  got = jax.jit(U.weighted_error)(pred, target, w)
  chex.assert_shape(got, (3,))
  d = np.linalg.norm(pred - target, axis=-1)
  np.testing.assert_allclose(got, (d * w).sum((-2, -1)) / w.sum(), rtol=1e-5)
  g = jax.grad(lambda p: U.weighted_error(p, jnp.asarray(target), w).sum())(jnp.asarray(target))
  assert np.all(np.isfinite(g)) and np.all(g == 0)


def test_map_to_mesh_closed_form():
  pixels, tri = U.map_to_mesh(np.ones((3, 3), bool))
  np.testing.assert_array_equal(pixels, np.arange(9))
  chex.assert_shape(tri, (8, 3))
  assert tri.dtype == np.int32
  # an L of three pixels gives one triangle, for each missing corner; with its corner: two
  for missing in range(4):
    m = np.ones((2, 2), bool)
    m.flat[missing] = False
    pixels, tri = U.map_to_mesh(m)
    assert len(pixels) == 3 and len(tri) == 1
    assert signed_area(np.stack([pixels % 2, pixels // 2], -1).astype(float), tri)[0] == 0.5
  rng = np.random.default_rng(2)
  m = rng.random((20, 25)) < 0.7
  pixels, tri = U.map_to_mesh(m)
  np.testing.assert_array_equal(pixels, np.flatnonzero(m))
  xy = np.stack([pixels % 25, pixels // 25], -1).astype(float)
  area = signed_area(xy, tri)
  assert np.all(area == 0.5)  # every triangle is half a cell, wound with positive area (x right, y down)
  corners = m[:-1, :-1].astype(int) + m[:-1, 1:] + m[1:, :-1] + m[1:, 1:]
  assert len(tri) == 2 * (corners == 4).sum() + (corners == 3).sum()
  assert len(np.unique(np.sort(tri, axis=1), axis=0)) == len(tri)


# ------------------------------------------------------------------------------------ shared assets

@pytest.fixture(scope="module")
def prnet_dir(shared_data):
  path = shared_data / "prnet_uv"
  if not path.exists():
    pytest.skip(f"needs {path} (PRNet's uv-data in the licensed ../shared/data folder)")
  return path


@pytest.fixture(scope="module")
def bfm_uv(bfm_dir):
  """The BFM mesh in UV: uv (N, 2), 256 px coords, 0-based triangles, keypoint vertex ids, mean xyz (N, 3)."""
  import scipy.io
  uv = U.load_uv_coords(bfm_dir)
  m = scipy.io.loadmat(str(bfm_dir / "Model_Shape_Sim.mat"))
  xyz = (np.load(bfm_dir / "u_shp.npy") + np.load(bfm_dir / "u_exp.npy")).reshape(-1, 3).astype(np.float64)
  return dict(uv=uv, px=U.uv_pixel_coords(uv, 256), tri=m["tri"].T.astype(np.int64) - 1,
              kpt=m["keypoints"].reshape(-1).astype(np.int64) - 1, xyz=xyz)


@pytest.fixture(scope="module")
def posmap(bfm_uv):
  """The mean face's 256 x 256 position map, before and after filling (the only two full-size rasterisations)."""
  raw, covered = U.rasterize_uv(bfm_uv["xyz"], bfm_uv["px"], bfm_uv["tri"], 256, fill_holes=False)
  img, mask = U.rasterize_uv(bfm_uv["xyz"], bfm_uv["px"], bfm_uv["tri"], 256)
  return dict(raw=raw, covered=covered, img=img, mask=mask)


@pytest.mark.shared_data
def test_bfm_uv_layout_matches_prnet_keypoints(bfm_uv, prnet_dir):
  chex.assert_shape(bfm_uv["uv"], (53215, 2))
  assert bfm_uv["uv"].min() >= 0 and bfm_uv["uv"].max() <= 1
  kpt_px = U.keypoint_pixels(prnet_dir / "uv_kpt_ind.txt")
  chex.assert_shape(kpt_px, (68, 2))
  diff = np.abs(bfm_uv["px"][bfm_uv["kpt"]] - kpt_px)
  assert diff.max() <= 0.5 + 1e-6, diff.max()  # measured: exactly 0.5 at worst (PRNet rounded)


@pytest.mark.shared_data
def test_bfm_coverage_and_mouth_slit(posmap):
  covered, mask = posmap["covered"], posmap["mask"]
  assert covered.sum() == 65407  # README: 65,407 of 65,536
  slit = mask & ~covered
  ys, xs = np.nonzero(slit)
  assert slit.sum() == 129 and mask.all()
  assert (xs.min(), xs.max(), ys.min(), ys.max()) == (112, 143, 138, 142)
  np.testing.assert_array_equal(posmap["img"][covered], posmap["raw"][covered])
  assert np.all(posmap["raw"][~covered] == 0)


@pytest.mark.shared_data
def test_position_map_round_trip(bfm_uv, posmap):
  """Sample the mean face's position map back at every vertex's UV pixel.

  Measured (BFM units; median edge length 1305, face extent ~2.2e5): median 5.3, p99 425, max 8632 (the
  nostrils, where many vertices share a few pixels); 46 vertices are off by more than one edge length. Every
  vertex's UV lands inside the map (u, v in [0, 1]), so none is excluded.
  """
  px, xyz = bfm_uv["px"], bfm_uv["xyz"]
  assert np.all((px >= 0) & (px <= 255))
  got = np.asarray(jax.jit(U.sample_map)(posmap["img"], px.astype(np.float32)), np.float64)
  err = np.linalg.norm(got - xyz, axis=1)
  assert np.median(err) < 10, np.median(err)
  assert np.percentile(err, 99) < 600, np.percentile(err, 99)
  assert err.max() < 1.2e4, err.max()
  assert (err > 1305).sum() < 100
  # the 68 landmarks at their exact UV pixels (sampled at PRNet's rounded pixels they are ~450 median off)
  ek = err[bfm_uv["kpt"]]
  assert np.median(ek) < 50 and ek.max() < 1000, (np.median(ek), ek.max())


@pytest.mark.shared_data
def test_position_map_matches_prnet_canonical_vertices(posmap, prnet_dir):
  """PRNet's canonical_vertices.npy is its rendered mean face at the face pixels: ours, scaled 0.0012 (x, -y, z),
  matches it up to an offset. Measured (its extent ~210): median 0.39, p99 1.26, max 3.6 (nostrils, ears, mouth);
  over the 129 filled mouth-slit pixels (PRNet closed the slit with face3d's mouth triangles) median 0.92, max
  3.1 (a row-wise fill would give a median of 5.8)."""
  face = read_grey(prnet_dir / "uv_face_mask.png") > 0
  pixels, tri = U.map_to_mesh(face)
  np.testing.assert_array_equal(pixels, np.loadtxt(prnet_dir / "face_ind.txt").astype(np.int64))
  canon = np.load(prnet_dir / "canonical_vertices.npy")
  ours = 1.2e-3 * posmap["img"].reshape(-1, 3)[pixels].astype(np.float64) * [1, -1, 1]
  r = np.linalg.norm(ours + np.median(canon - ours, axis=0) - canon, axis=1)
  assert np.median(r) < 0.6 and np.percentile(r, 99) < 2.0 and r.max() < 5.0, (np.median(r), r.max())
  slit = (posmap["mask"] & ~posmap["covered"]).reshape(-1)[pixels]
  assert slit.sum() == 129  # the slit is inside the face mask
  assert np.median(r[slit]) < 1.5 and r[slit].max() < 5.0, (np.median(r[slit]), r[slit].max())
  # the face mesh: every face pixel is used, all triangles wound like the BFM's in UV
  assert len(np.unique(tri)) == len(pixels)
  area = signed_area(np.stack([pixels % 256, pixels // 256], -1).astype(float), tri)
  assert np.all(area == 0.5)


@pytest.mark.shared_data
def test_weight_map(prnet_dir):
  w = U.weight_map(prnet_dir)
  chex.assert_shape(w, (256, 256))
  assert w.dtype == np.float32
  values, counts = np.unique(w, return_counts=True)
  np.testing.assert_array_equal(values, [0, 3, 4, 16])
  kpt = U.keypoint_pixels(prnet_dir / "uv_kpt_ind.txt")
  assert counts[-1] == 68 and np.all(w[kpt[:, 1], kpt[:, 0]] == 16)
  face = read_grey(prnet_dir / "uv_face_mask.png") > 0
  shipped = read_grey(prnet_dir / "uv_weight_mask.png")
  neck = (shipped > 0) & ~face
  assert neck.sum() > 20000 and np.all(w[neck] == 0)  # README: 21,413 weight-48 pixels outside the face mask
  np.testing.assert_array_equal(w > 0, face)
  assert counts[2] == 10921  # 10,429 at level 64, plus the blended edge pixels snapped to it
  for size in (128, 512):
    ws = U.weight_map(prnet_dir, size)
    chex.assert_shape(ws, (size, size))
    v, c = np.unique(ws, return_counts=True)
    np.testing.assert_array_equal(v, [0, 3, 4, 16])
    assert c[-1] == 68
    frac = c / c.sum()
    np.testing.assert_allclose(frac[:3], counts[:3] / counts.sum(), atol=0.015)
