"""jface.methods.prnet.posmap: closed forms on a plane mesh, image/map consistency under crops and similarities,
and (when ../shared/data exists) ground-truth maps of AFLW2000-3D fits against their pt3d_68 labels."""
from __future__ import annotations

import chex
import numpy as np
import pytest

from jface.core import uv as U
from jface.data import mat_layout
from jface.methods.prnet import posmap as P
from tests.helpers.fakes import random_face_model

S = 32  # map side of the synthetic tests


def grid_mesh(n, size):
  """(n*n, 2) UV pixel grid over the whole [0, size-1]^2 square (x fastest) and its triangles."""
  ys, xs = np.mgrid[0:n, 0:n] * ((size - 1) / (n - 1))
  vid = np.arange(n * n).reshape(n, n)
  a, b, c, d = vid[:-1, :-1].ravel(), vid[:-1, 1:].ravel(), vid[1:, :-1].ravel(), vid[1:, 1:].ravel()
  return np.stack([xs.ravel(), ys.ravel()], -1), np.concatenate([np.stack([a, b, c], -1), np.stack([b, d, c], -1)])


# image coordinates of the plane as an affine function of the UV pixel (u, v): rows x, y, z
PLANE = np.array([[3.0, 0.5, 100.0], [-0.4, 2.5, 60.0], [0.7, -1.2, 40.0]])


def plane_vertices(uv_px):
  return uv_px @ PLANE[:, :2].T + PLANE[:, 2]


def blob_image(pts, size, sigma=1.5):
  """(size, size) float32 sum of Gaussians centred at 0-based pixel points (K, 2)."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)) for x, y in pts)
  return img.astype(np.float32)


def centroid(img, p, r=5):
  """Intensity centroid (0-based x, y) of the window of radius r around pixel p."""
  x0, y0 = int(round(p[0])), int(round(p[1]))
  win = img[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1].astype(np.float64)
  yy, xx = np.mgrid[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
  return np.array([(win * xx).sum(), (win * yy).sum()]) / win.sum()


# ------------------------------------------------------------------------------------------- closed forms

def test_crop_box_closed_form():
  pts = np.array([[10.0, 20.0], [30.0, 60.0], [20.0, 30.0], [np.nan, 5.0]])  # box 20 x 40, the NaN row ignored
  np.testing.assert_allclose(P.crop_box_for_posmap(pts), [-2.5, 17.5, 42.5, 62.5])  # 1.5 x mean side 30
  np.testing.assert_allclose(P.crop_box_for_posmap(pts, side="max"), [-10, 10, 50, 70])  # 1.5 x 40
  # shift in units of the landmark-box size (30), zoom on the side: 1.6 * 1.1 * 30 = 52.8
  np.testing.assert_allclose(P.crop_box_for_posmap(pts, 1.6, shift=(0.1, -0.1), zoom=1.1),
                             [23 - 26.4, 37 - 26.4, 23 + 26.4, 37 + 26.4])
  with pytest.raises(ValueError):
    P.crop_box_for_posmap(pts[:1])
  a, b = P.sample_box_jitter(np.random.default_rng(5)), P.sample_box_jitter(np.random.default_rng(5))
  np.testing.assert_array_equal(a[0], b[0])
  assert a[1] == b[1]
  draws = [P.sample_box_jitter(np.random.default_rng(i)) for i in range(200)]
  shifts, zooms = np.array([d[0] for d in draws]), np.array([d[1] for d in draws])
  assert np.abs(shifts).max() <= 0.1 and shifts.min() < -0.09 and 0.9 <= zooms.min() < zooms.max() <= 1.1


def test_plane_position_map_closed_form():
  """A plane mesh whose image position is affine in UV: the map is that affine after the crop, at every pixel."""
  uv_px, tri = grid_mesh(5, S)
  verts = plane_vertices(uv_px)
  box = np.array([80.0, 40.0, 180.0, 140.0])  # side 100 -> k = 31 / 100
  pm = P.position_map(verts, box, uv_px, tri, S)
  chex.assert_shape(pm, (S, S, 3))
  assert pm.dtype == np.float32
  k = (S - 1) / 100.0
  ys, xs = np.mgrid[0:S, 0:S]
  img = plane_vertices(np.stack([xs, ys], -1).astype(np.float64))  # (S, S, 3) image coords of every pixel
  want = np.stack([k * (img[..., 0] - 80), k * (img[..., 1] - 40), k * img[..., 2]], -1)
  want[..., 2] -= k * verts[:, 2].min()
  np.testing.assert_allclose(pm, want, atol=2e-5 * np.abs(want).max())
  assert pm[..., 2].min() == pytest.approx(0.0, abs=1e-6)  # min z over the vertices is 0 (a corner vertex)
  # the inverse: back to image coordinates, z up to the removed offset
  back = P.map_to_image(pm, box, S)
  np.testing.assert_allclose(back[..., :2], img[..., :2], atol=1e-4)
  np.testing.assert_allclose(back[..., 2] + verts[:, 2].min(), img[..., 2], atol=1e-4)
  # a box half as large about the same centre doubles x, y about the centre and z (similarity)
  small = P.position_map(verts, [105.0, 65.0, 155.0, 115.0], uv_px, tri, S)
  c = (S - 1) / 2
  np.testing.assert_allclose(small[..., :2] - c, 2 * (pm[..., :2] - c), atol=1e-4)
  np.testing.assert_allclose(small[..., 2], 2 * pm[..., 2], atol=1e-4)
  # the keypoint read: exact pixel values
  kpt = np.array([[0, 0], [31, 0], [7, 19], [25, 30]])
  np.testing.assert_allclose(P.landmarks_from_map(pm, kpt), pm[kpt[:, 1], kpt[:, 0]], atol=1e-6)


def test_crop_image_matches_crop_affine():
  """A Gaussian blob at image point (x, y) (1-based) lands at crop pixel crop_affine @ (x, y, 1)."""
  pt = np.array([57.3, 41.8])  # 1-based image coordinates
  image = blob_image([pt - 1], 100, sigma=2.0)
  box = np.array([30.0, 20.0, 96.0, 86.0])  # side 66 -> 64 px: k ~ 0.95
  out = P.crop_image(image, box, 64)
  chex.assert_shape(out, (64, 64))
  want = P.crop_affine(box, 64) @ np.append(pt, 1.0)
  np.testing.assert_allclose(centroid(out, want), want, atol=0.03)


def test_warp_example_keeps_image_and_map_consistent():
  """Blobs drawn at the map's keypoints stay under the keypoints read from the warped map."""
  size = 96
  uv_px, tri = grid_mesh(7, size)
  verts = plane_vertices(uv_px)
  box = P.crop_box_for_posmap(verts[:, :2], 1.6)  # the plane spans ~60 % of the crop
  pm = P.position_map(verts, box, uv_px, tri, size)
  kpt = np.array([[22, 22], [72, 24], [47, 47], [24, 72], [70, 71]])
  lm = np.asarray(P.landmarks_from_map(pm, kpt), np.float64)
  image = blob_image(lm[:, :2], size)
  for angle, scale, shift in [(30.0, 1.1, (3.0, -2.0)), (-45.0, 0.9, (-5.0, 4.0))]:
    a = P.pixel_similarity(angle, scale, shift, size)
    img2, pm2 = P.warp_example(image, pm, a)
    assert img2.shape == image.shape and pm2.shape == pm.shape
    lm2 = np.asarray(P.landmarks_from_map(pm2, kpt), np.float64)
    np.testing.assert_allclose(lm2[:, :2], lm[:, :2] @ a[:, :2].T + a[:, 2], atol=1e-3)
    np.testing.assert_allclose(lm2[:, 2], scale * lm[:, 2], atol=1e-3)  # z scales with the similarity
    assert np.all((lm2[:, :2] > 8) & (lm2[:, :2] < size - 9))
    got = np.array([centroid(img2, p) for p in lm2[:, :2]])
    np.testing.assert_allclose(got, lm2[:, :2], atol=0.03)  # measured 0.012; a 0.5 px convention slip gives 0.5


def test_transform_map_checks_and_mask():
  pm = np.random.default_rng(0).uniform(0, 30, size=(S, S, 3)).astype(np.float32)
  a = P.pixel_similarity(20.0, 1.5, (1.0, 2.0), S)
  mask = np.zeros((S, S), bool)
  mask[:10] = True
  out = P.transform_map(pm, a, mask)
  np.testing.assert_array_equal(out[10:], pm[10:])
  np.testing.assert_allclose(out[:10, :, 2], 1.5 * pm[:10, :, 2], rtol=1e-6)
  for bad in ([[1.0, 0, 0], [0, -1.0, 0]], [[1.0, 0.2, 0], [0, 1.0, 0]], [[2.0, 0, 0], [0, 1.0, 0]]):
    with pytest.raises(ValueError, match="similarity"):  # reflection, shear, anisotropic scale
      P.transform_map(pm, np.array(bad))


def test_fit_vertices_match_param_path():
  """fit_image_vertices (.mat -> image) equals image_vertices(mat_to_params(...)) and the literal formula."""
  model = random_face_model(n_dense=120)
  rng = np.random.default_rng(3)
  mat = {"Pose_Para": np.array([[0.2, -0.5, 0.1, 220.0, 210.0, 30.0, 1.2e-3]]),
         "Shape_Para": rng.normal(size=(199, 1)) * 3e4, "Exp_Para": rng.normal(size=(29, 1)) * 0.5}
  v = P.fit_image_vertices(model, mat, 450)
  chex.assert_shape(v, (120, 3))
  s, r, t = mat_layout.pose_para_to_srt(mat["Pose_Para"])
  shape = (np.asarray(model.u_dense, np.float64) + np.asarray(model.w_shp_dense, np.float64) @ mat["Shape_Para"][:40, 0]
           + np.asarray(model.w_exp_dense, np.float64) @ mat["Exp_Para"][:10, 0]).reshape(-1, 3)
  q = s * shape @ r.T + t
  np.testing.assert_allclose(v, np.stack([q[:, 0], 451 - q[:, 1], q[:, 2]], -1), atol=1e-6)
  box = np.array([120.0, 100.0, 330.0, 310.0])
  v2 = P.image_vertices(model, mat_layout.mat_to_params(mat, box, 450, model), box)
  np.testing.assert_allclose(v2, v, atol=2e-3)  # float32 geometry
  with pytest.raises(ValueError, match="dense bases"):
    P.fit_image_vertices(random_face_model(), mat, 450)


# ---------------------------------------------------------------------------------------------- real data

IMAGES = ("image04062", "image01477", "image01818")  # aflw2000_3d_train, |yaw| 2.6, 30.1, 73.9 degrees


@pytest.fixture(scope="module")
def real(train_dir):
  from jface.core.load import load_model
  from jface.data import common
  shared = train_dir.parent
  for need, what in (("3dmm_dense", "the dense bases: python -m jface.core.dense_bases fetch"),
                     ("prnet_uv", "PRNet's uv-data")):
    if not (shared / need).exists():
      pytest.skip(f"needs {shared / need} ({what})")
  bfm = shared / "3dmm"
  model = load_model(str(bfm), str(shared / "3dmm_dense"))
  uv_px = U.uv_pixel_coords(U.load_uv_coords(bfm))
  tri = np.asarray(model.tri)
  kpt = U.keypoint_pixels(shared / "prnet_uv" / "uv_kpt_ind.txt")
  out = dict(model=model, uv_px=uv_px, tri=tri, kpt=kpt, prnet=shared / "prnet_uv", items=[])
  for stem in IMAGES:
    mat = common.read_mat(str(train_dir / "AFLW2000" / f"{stem}.mat"))
    h = common.image_size(str(train_dir / "AFLW2000" / f"{stem}.jpg"))[0]
    verts = P.fit_image_vertices(model, mat, h)
    pts = mat_layout.mat_pts68(mat)  # (3, 68) image coordinates
    box = P.crop_box_for_posmap(pts[:2].T)
    pm = P.position_map(verts, box, uv_px, tri)
    out["items"].append(dict(stem=stem, mat=mat, h=h, verts=verts, pts=pts, box=box, pm=pm))
  return out


@pytest.mark.shared_data
def test_real_map_keypoints_back_to_pt3d_68(real):
  """Map from the .mat fit -> the 68 keypoint pixels -> image: against pt3d_68 and the fit's keypoint vertices.

  Measured (NME = mean 2D distance / sqrt(w h) of the pt3d_68 box, %): map 0.895 / 1.194 / 1.111 for the three
  images, the fit's own keypoint vertices 0.808 / 1.150 / 1.001 (the 40/10 truncation). The map's keypoints are
  off the fit's keypoint vertices by a median 0.54 / 0.40 / 0.36 px, max 2.57 / 1.64 / 1.11 px (image pixels; boxes
  of 323 / 243 / 239 px), mostly because PRNet's uv_kpt_ind pixels are rounded (<= 0.5 UV px): read at the
  vertices' exact UV positions, median 0.02-0.03 px, max 0.45-0.82 px. z (after undoing the shift): max 1.3-2.1 px.
  """
  kv = np.asarray(real["model"].keypoints)
  for it in real["items"]:
    pm, box, pts, verts = it["pm"], it["box"], it["pts"], it["verts"]
    chex.assert_shape(pm, (256, 256, 3))
    assert pm.dtype == np.float32 and np.all(np.isfinite(pm))
    assert pm[..., 2].min() >= -1e-4 and np.median(pm[..., :2]) > 50  # z shifted to >= 0; a face in the crop
    back = P.map_to_image(np.asarray(P.landmarks_from_map(pm, real["kpt"]), np.float64), box)
    lo, hi = pts[:2].min(1), pts[:2].max(1)
    norm = np.sqrt(np.prod(hi - lo))
    nme = np.linalg.norm(back[:, :2] - pts[:2].T, axis=1).mean() / norm * 100
    fit_nme = np.linalg.norm(verts[kv, :2] - pts[:2].T, axis=1).mean() / norm * 100
    assert nme < 1.5 and nme < fit_nme + 0.15, (it["stem"], nme, fit_nme)
    e = np.linalg.norm(back[:, :2] - verts[kv, :2], axis=1)
    assert np.median(e) < 0.7 and e.max() < 3.5, (it["stem"], np.median(e), e.max())
    dz = back[:, 2] + verts[:, 2].min() - verts[kv, 2]  # z comes back up to the removed offset
    assert np.abs(dz).max() < 3.0, (it["stem"], np.abs(dz).max())


@pytest.mark.shared_data
def test_real_param_path_matches_fit(real, train_dir):
  """The whitened-params path (benchmark roi box) gives the same vertices as the .mat path (float32: 5e-5 px)."""
  meta = np.load(train_dir / "meta.npz")
  names = [str(n) for n in meta["names"]]
  it = real["items"][1]
  box = meta["roi_box"][names.index(it["stem"] + ".jpg")]
  pw = mat_layout.mat_to_params(it["mat"], box, it["h"], real["model"])
  v = P.image_vertices(real["model"], pw, box)
  assert np.abs(v - it["verts"]).max() < 1e-3


@pytest.mark.shared_data
def test_real_uint8_maps_lose_precision(real):
  """Rounding a map to uint8 (values as they are, 0-255): measured max keypoint error 0.66 / 0.61 / 0.68 crop px in
  x, y (0.83 / 0.58 / 0.64 image px; mean 0.35-0.49) and 0.49 in z, where the float map is exact; and values outside
  [0, 255] are clipped: 0.1 / 0.2 / 4.7 % of the pixels (neck, ears) leave the crop, by up to 0.5 / 2.4 / 18.9 px."""
  worst = []
  for it in real["items"]:
    pm = it["pm"]
    lm = np.asarray(P.landmarks_from_map(pm, real["kpt"]), np.float64)
    q = np.clip(np.rint(pm), 0, 255).astype(np.uint8)
    lq = np.asarray(P.landmarks_from_map(q, real["kpt"]), np.float64)
    err = np.linalg.norm(lq[:, :2] - lm[:, :2], axis=1)
    assert 0.5 < err.max() <= 0.5 * np.sqrt(2) + 1e-4, (it["stem"], err.max())
    assert np.abs(lq[:, 2] - lm[:, 2]).max() > 0.45
    worst.append(np.abs(q.astype(np.float64) - pm).max())
  assert worst[2] > 15  # the profile: clipped neck/ear pixels


@pytest.mark.shared_data
def test_real_mean_face_map_vs_prnet_canonical(real):
  """A frontal mean face's map, restricted to PRNet's face pixels, is PRNet's canonical_vertices.npy up to a
  positive scale and an offset (same x right / y down / z towards the viewer convention). Measured: scale 0.994
  (also when x, y, z are fitted separately), z offset 0.004 (canonical_vertices is itself such a map, z min 0);
  residual median 0.39, p99 1.25, max 3.6 (canonical units = 256-px crop pixels, face extent ~210)."""
  import cv2
  mat = {"Pose_Para": np.array([[0.0, 0.0, 0.0, 225.0, 225.0, 0.0, 1.5e-3]]),
         "Shape_Para": np.zeros((199, 1)), "Exp_Para": np.zeros((29, 1))}
  verts = P.fit_image_vertices(real["model"], mat, 450)
  box = P.crop_box_for_posmap(verts[np.asarray(real["model"].keypoints), :2])
  pm = P.position_map(verts, box, real["uv_px"], real["tri"])
  face = cv2.imread(str(real["prnet"] / "uv_face_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
  ours = pm[face].astype(np.float64)  # row-major: the order of face_ind.txt
  canon = np.load(real["prnet"] / "canonical_vertices.npy")
  a = np.c_[ours.reshape(-1, 1), np.kron(np.ones((len(ours), 1)), np.eye(3))]
  sol = np.linalg.lstsq(a, canon.reshape(-1), rcond=None)[0]  # canon ~ scale * ours + offset
  r = np.linalg.norm(sol[0] * ours + sol[1:] - canon, axis=1)
  assert 0.98 < sol[0] < 1.01 and abs(sol[3]) < 0.5, sol
  assert np.median(r) < 0.6 and r.max() < 5.0, (np.median(r), r.max())
