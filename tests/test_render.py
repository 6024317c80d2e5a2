"""jface.core.render: coverage, z-buffer order and Lambert shading against closed forms / brute force."""
from __future__ import annotations

import chex
import numpy as np
import pytest

from jface.core import render


def _inside_bruteforce(tri_xy: np.ndarray, h: int, w: int) -> np.ndarray:
  """(h, w) bool: pixel centres (1-based: (c + 1, r + 1)) inside a triangle (3, 2), plain float64 numpy."""
  yy, xx = np.mgrid[1:h + 1, 1:w + 1].astype(np.float64)
  (x0, y0), (x1, y1), (x2, y2) = tri_xy
  def edge(ax, ay, bx, by):
    return (bx - ax) * (yy - ay) - (by - ay) * (xx - ax)
  e0, e1, e2 = edge(x0, y0, x1, y1), edge(x1, y1, x2, y2), edge(x2, y2, x0, y0)
  return ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))


def _square(x0, y0, x1, y1, z=0.0):
  v = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float64)
  return v, np.array([[0, 1, 2], [0, 2, 3]])


def test_single_triangle_coverage_and_colour():
  # A right triangle with legs 60 and 40 px, vertices off the pixel lattice: area 1200 px^2.
  xy = np.array([[10.3, 20.6], [70.3, 20.6], [10.3, 60.6]])
  v = np.concatenate([xy, np.zeros((3, 1))], axis=1)
  col = np.array([[0.2, 0.6, 1.0]] * 3)
  img = render.render(v, np.array([[0, 1, 2]]), col, size=100, ambient=1.0, diffuse=0.0)
  chex.assert_shape(img, (100, 100, 3))
  chex.assert_type(img, np.uint8)
  covered = np.any(img > 0, axis=-1)
  np.testing.assert_array_equal(covered, _inside_bruteforce(xy, 100, 100))
  assert abs(covered.sum() - 1200.0) / 1200.0 < 0.015
  np.testing.assert_array_equal(img[covered], np.tile([51, 153, 255], (covered.sum(), 1)))
  # Winding does not matter.
  img2 = render.render(v, np.array([[0, 2, 1]]), col, size=100, ambient=1.0, diffuse=0.0)
  np.testing.assert_array_equal(img, img2)


def test_non_square_and_background():
  v, tri = _square(5.5, 3.5, 20.5, 9.5)
  bg = np.full((12, 30, 3), 7, np.uint8)
  img = render.render(v, tri, np.ones((4, 3)), background=bg, ambient=1.0, diffuse=0.0)
  chex.assert_shape(img, (12, 30, 3))
  expect = np.zeros((12, 30), bool)
  expect[3:9, 5:20] = True  # rows 4..9 and columns 6..20 (1-based centres) lie inside
  np.testing.assert_array_equal(img[..., 0] == 255, expect)
  assert np.all(img[~expect] == 7) and np.all(bg == 7)


def test_shared_edge_has_no_crack():
  # Two triangles of a square split along its diagonal: every pixel centre inside the square is covered.
  v, tri = _square(3.0, 3.0, 40.0, 30.0)
  pix, face, bary, depth = render.rasterize(v, tri, 40, 50)
  assert len(pix) == len(np.unique(pix)) == 38 * 28
  np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-9)
  assert bary.min() > -1e-5


@pytest.mark.parametrize("near_first", [True, False])
def test_zbuffer_near_triangle_wins(near_first):
  # Larger z is nearer the camera (see the module doc); the near triangle hides the far one in the overlap.
  near = np.array([[10.0, 10.0, 5.0], [50.0, 10.0, 5.0], [10.0, 50.0, 5.0]])
  far = np.array([[20.0, 20.0, -3.0], [60.0, 20.0, -3.0], [20.0, 60.0, -3.0]])
  red, blue = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
  parts = [(near, red), (far, blue)] if near_first else [(far, blue), (near, red)]
  v = np.concatenate([p[0] for p in parts])
  col = np.concatenate([np.tile(p[1], (3, 1)) for p in parts])
  img, depth = render.render(v, np.array([[0, 1, 2], [3, 4, 5]]), col, size=64, ambient=1.0, diffuse=0.0,
                             return_depth=True)
  in_near = _inside_bruteforce(near[:, :2], 64, 64)
  in_far = _inside_bruteforce(far[:, :2], 64, 64)
  assert (in_near & in_far).sum() > 200
  assert np.all(img[in_near] == [255, 0, 0])
  assert np.all(img[in_far & ~in_near] == [0, 0, 255])
  np.testing.assert_allclose(depth[in_near], 5.0)
  np.testing.assert_allclose(depth[in_far & ~in_near], -3.0)
  assert np.all(np.isneginf(depth[~in_near & ~in_far]))


def test_depth_is_interpolated_within_a_triangle():
  # A sloped triangle in front of a flat one: it wins exactly where its interpolated z is larger.
  slope = np.array([[5.0, 5.0, -10.0], [45.0, 5.0, 10.0], [5.0, 45.0, -10.0]])  # z = (x - 25) / 2
  flat = np.array([[5.0, 5.0, 0.0], [45.0, 5.0, 0.0], [5.0, 45.0, 0.0]])
  col = np.concatenate([np.tile([1.0, 0, 0], (3, 1)), np.tile([0, 1.0, 0], (3, 1))])
  img = render.render(np.concatenate([slope, flat]), np.array([[0, 1, 2], [3, 4, 5]]), col, size=50,
                      ambient=1.0, diffuse=0.0)
  inside = _inside_bruteforce(slope[:, :2], 50, 50)
  xx = np.arange(1, 51)[None, :].repeat(50, 0)
  red = img[..., 0] == 255
  np.testing.assert_array_equal(red[inside & (xx > 26)], True)
  np.testing.assert_array_equal(red[inside & (xx < 24)], False)


@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 60.0, 80.0, 120.0])
def test_lambert_cosine_flat_patch(angle_deg):
  v, tri = _square(2.0, 2.0, 40.0, 40.0)
  a = np.radians(angle_deg)
  light = np.array([np.sin(a), 0.0, np.cos(a)])
  albedo, amb, dif = 0.8, 0.1, 0.85
  img = render.render(v, tri, np.full((4, 3), albedo), size=42, light_dir=light, ambient=amb, diffuse=dif)
  expect = np.rint(255 * albedo * (amb + dif * max(np.cos(a), 0.0)))
  np.testing.assert_array_equal(img[5:35, 5:35], expect)


def test_lambert_tilted_patch_and_light_frame():
  # Plane z = k x: unit normal (-k, 0, 1) / sqrt(1 + k^2); with a head-on light cos = 1 / sqrt(1 + k^2).
  k = 0.75
  xs, ys = np.meshgrid(np.linspace(2, 40, 5), np.linspace(2, 40, 5))
  v = np.stack([xs.ravel(), ys.ravel(), k * xs.ravel()], -1)
  idx = np.arange(25).reshape(5, 5)
  tri = np.concatenate([np.stack([idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:]], -1).reshape(-1, 3),
                        np.stack([idx[:-1, :-1], idx[1:, 1:], idx[1:, :-1]], -1).reshape(-1, 3)])
  img = render.render(v, tri, np.ones((25, 3)), size=42, light_dir=(0, 0, 1), ambient=0.0, diffuse=1.0)
  np.testing.assert_array_equal(img[10:30, 10:30], np.rint(255 / np.sqrt(1 + k * k)))
  # Lit along the normal: full brightness. y is down in the crop frame: (0, -1, 1) lights from above.
  img = render.render(v, tri, np.ones((25, 3)), size=42, light_dir=(-k, 0, 1), ambient=0.0, diffuse=1.0)
  np.testing.assert_array_equal(img[10:30, 10:30], 255)
  n = render.vertex_normals(v, tri)
  np.testing.assert_allclose(n, np.tile([-k, 0, 1] / np.sqrt(1 + k * k), (25, 1)), atol=1e-12)
  np.testing.assert_allclose(render.vertex_normals(v, tri[:, ::-1]), n, atol=1e-12)


def test_draw_mesh_overlay_blends_only_covered_pixels():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
  v, tri = _square(10.0, 10.0, 50.0, 40.0, z=3.0)
  out = render.draw_mesh_overlay(image, v, tri, alpha=0.5, color=(1.0, 1.0, 1.0))
  chex.assert_shape(out, image.shape)
  chex.assert_type(out, np.uint8)
  covered = np.zeros((60, 80), bool)
  covered[9:40, 9:50] = True
  np.testing.assert_array_equal(out[~covered], image[~covered])
  # Head-on light, flat patch: shaded colour 255 * (0.25 + 0.85) clipped to 255.
  np.testing.assert_array_equal(out[covered], np.rint(0.5 * image[covered] + 0.5 * 255).astype(np.uint8))
  assert not np.shares_memory(out, image)


def test_draw_landmarks_positions():
  image = np.zeros((20, 30, 3), np.uint8)
  pts = np.array([[5.0, 7.0], [25.0, 15.0], [-40.0, 3.0], [np.nan, 2.0]])
  out = render.draw_landmarks(image, pts, color=(0, 255, 0), radius=1.0)
  assert np.all(image == 0)
  assert out[6, 4, 1] == 255 and out[14, 24, 1] == 255  # (x, y) -> array [y - 1, x - 1]
  assert out[..., 1].sum() > 0 and np.all(out[..., 0] == 0)
  masked = render.draw_landmarks(image, pts, mask=np.array([False, True, True, True]))
  assert masked[6, 4, 1] == 0 and masked[14, 24, 1] == 255


def test_bad_inputs_raise():
  v, tri = _square(1, 1, 5, 5)
  with pytest.raises(ValueError, match="vertices"):
    render.render(v[:, :2], tri, np.ones((4, 3)))
  with pytest.raises(ValueError, match="tri"):
    render.render(v, tri + 10, np.ones((4, 3)))
  with pytest.raises(ValueError, match="colors"):
    render.render(v, tri, np.ones((3, 3)))
  with pytest.raises(ValueError, match="light_dir"):
    render.render(v, tri, np.ones((4, 3)), light_dir=(0, 0, 0))
  with pytest.raises(ValueError, match="image"):
    render.draw_mesh_overlay(np.zeros((5, 5), np.uint8), v, tri)
  with pytest.raises(ValueError, match="background"):
    render.render(v, tri, np.ones((4, 3)), background=np.zeros((8, 8, 3), np.float32))


def test_empty_and_offscreen_meshes():
  v, tri = _square(-50, -50, -10, -10)
  img = render.render(v, tri, np.ones((4, 3)), size=16)
  assert img.shape == (16, 16, 3) and not img.any()
  img = render.render(np.zeros((0, 3)), np.zeros((0, 3), int), np.zeros((0, 3)), size=8)
  assert not img.any()
  # Partly off-screen: clipped, no wrap-around to the other side.
  v, tri = _square(-10.0, 5.0, 6.0, 9.0)
  img = render.render(v, tri, np.ones((4, 3)), size=16, ambient=1.0, diffuse=0.0)
  expect = np.zeros((16, 16), bool)
  expect[4:9, 0:6] = True
  np.testing.assert_array_equal(img[..., 0] > 0, expect)


def test_cull_by_projected_area_sign():
  v = np.array([[5.0, 5.0, 0.0], [30.0, 5.0, 0.0], [5.0, 30.0, 0.0]])  # (p1 - p0) x (p2 - p0) > 0 (y down)
  col = np.ones((3, 3))
  for tri, sign in ((np.array([[0, 1, 2]]), 1), (np.array([[0, 2, 1]]), -1)):
    assert render.render(v, tri, col, size=32, cull=0).any()
    assert not render.render(v, tri, col, size=32, cull=sign).any()
    assert render.render(v, tri, col, size=32, cull=-sign).any()
  with pytest.raises(ValueError, match="cull"):
    render.render(v, np.array([[0, 1, 2]]), col, cull=2)
