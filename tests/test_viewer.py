"""The 3D outputs of predict: ``jface.inference.glb`` (binary glTF writer/reader) and ``jface.inference.viewer``
(the offline HTML viewer), and their hook in the predict CLI.

The screenshot tests render pages in headless Chromium (software WebGL: SwiftShader) and skip when ``chromium`` is
not installed (``apt-get install chromium``; ``.ci/run`` does it when it can). The mesh is a synthetic face's exact
dense mesh (its image coordinates from the example's params) textured with four coloured quadrants split at the
face centre, so a screenshot shows whether the texture is applied and whether the face is upright and not mirrored.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess

import cv2
import numpy as np
import pytest

from jface.core import synthetic
from jface.inference import glb, outputs, viewer


def _find_chromium():
  """The chromium binary when ``--version`` runs (Ubuntu's snap-less ``chromium`` wrapper does not), else None."""
  path = shutil.which("chromium") or shutil.which("chromium-browser")
  if path is None:
    return None
  try:
    p = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return None
  return path if p.returncode == 0 and re.match(r"(chromium|google chrome) \d", p.stdout.strip().lower()) else None


CHROMIUM = _find_chromium()
WINDOW = (1000, 600)
HEADER = 40  # px: the page header above the 3D canvas


# --------------------------------------------------------------------------------------------- helpers

def grid_mesh(n=4, seed=0, offset=(0.0, 0.0)):
  """An n x n vertex grid (image coordinates, a bumpy sheet facing the viewer) and its 2 (n-1)^2 triangles."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
  v = np.stack([3 + 5 * xx.ravel() + offset[0], 2 + 4 * yy.ravel() + offset[1], rng.uniform(0, 2, n * n)], 1)
  q = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()
  tri = np.concatenate([np.stack([q, q + 1, q + n], 1), np.stack([q + 1, q + n + 1, q + n], 1)])
  return v, tri


@pytest.fixture(scope="module")
def face():
  """A near-frontal synthetic face: (image, vertices (N, 3) in its image coordinates, triangles)."""
  from jface.data.synthetic_faces import SyntheticFaces
  a = synthetic.numpy_arrays()
  ex = SyntheticFaces(8, seed=5)[7]
  assert abs(ex["yaw"]) < 10
  v = synthetic.vertices_np(ex["params"].astype(np.float64) * a["param_std"] + a["param_mean"], a)
  return ex["image"], v, a["tri"]


def quadrants(shape, centre):
  """RGB texture: red top-left, blue top-right, green bottom-left, yellow bottom-right of ``centre`` (x, y)."""
  h, w = shape
  yy, xx = np.mgrid[1:h + 1, 1:w + 1]
  img = np.zeros((h, w, 3), np.uint8)
  left, top = xx < centre[0], yy < centre[1]
  img[left & top], img[~left & top] = (255, 0, 0), (0, 0, 255)
  img[left & ~top], img[~left & ~top] = (0, 255, 0), (255, 255, 0)
  return img


def shoot(page, tmp_path, *flags):
  """Headless Chromium: (screenshot RGB, the page's ``data-rendered`` marker) of the file ``page``."""
  base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
          "--enable-unsafe-swiftshader", "--disable-dev-shm-usage", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
          f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1", "--virtual-time-budget=10000",
          *flags]
  png = str(tmp_path / (os.path.basename(page) + ".png"))
  url = "file://" + os.path.abspath(page)
  runs = [subprocess.Popen(base + [f"--user-data-dir={tmp_path / ('profile' + str(k))}", *extra, url],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for k, extra in enumerate(([f"--screenshot={png}"], ["--dump-dom"]))]
  outs = [r.communicate(timeout=90) for r in runs]
  img = cv2.imread(png)
  assert img is not None, f"no screenshot: {outs[0][1][-2000:]}"
  m = re.search(r'data-rendered="([^"]*)"', outs[1][0])
  return img[..., ::-1], m.group(1) if m else None


def stage(img):
  """The 3D canvas region of a screenshot (the right half below the header)."""
  return img[HEADER + 4:, WINDOW[0] // 2 + 4:].astype(np.int32)


def foreground(region):
  return np.abs(region - np.array(viewer.BACKGROUND)).max(-1) > 40


# --------------------------------------------------------------------------------------------- glb

def test_glb_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  (v0, tri), (v1, _) = grid_mesh(seed=1), grid_mesh(seed=2, offset=(4.0, 3.0))
  path = glb.write_glb(str(tmp_path / "a.glb"), img, [v0, v1], tri)  # clockwise once y is up: flipped
  data = open(path, "rb").read()
  magic, version, length = struct.unpack_from("<III", data)
  assert (magic, version, length) == (0x46546C67, 2, len(data)) and data[:4] == b"glTF"
  n_json, kind = struct.unpack_from("<II", data, 12)
  n_bin, kind_bin = struct.unpack_from("<II", data, 20 + n_json)
  assert (kind, kind_bin) == (0x4E4F534A, 0x004E4942) and n_json % 4 == 0 and n_bin % 4 == 0
  assert 12 + 8 + n_json + 8 + n_bin == len(data)
  g = glb.read_glb(path)
  doc = g.json
  assert doc["asset"]["version"] == "2.0" and len(g.bin) == n_bin >= doc["buffers"][0]["byteLength"]
  assert all(bv["byteOffset"] % 4 == 0 and bv["byteOffset"] + bv["byteLength"] <= len(g.bin)
             for bv in doc["bufferViews"])
  root = doc["nodes"][doc["scenes"][0]["nodes"][0]]
  assert [doc["nodes"][c]["mesh"] for c in root["children"]] == [0, 1]
  np.testing.assert_allclose(root["scale"], [1 / 30] * 3)
  for k, v in enumerate((v0, v1)):
    prim = doc["meshes"][k]["primitives"][0]
    att = {name: g.accessor(i) for name, i in prim["attributes"].items()}
    assert set(att) == {"POSITION", "NORMAL", "TEXCOORD_0"} and prim["mode"] == 4
    want = outputs.viewer_frame(v, 20).astype(np.float32)
    np.testing.assert_array_equal(att["POSITION"], want)
    acc = doc["accessors"][prim["attributes"]["POSITION"]]
    assert acc["min"] == want.min(0).tolist() and acc["max"] == want.max(0).tolist()
    assert att["POSITION"].dtype == np.float32 and acc["componentType"] == glb.FLOAT
    ind = g.accessor(prim["indices"])
    assert ind.dtype == np.uint32 and doc["accessors"][prim["indices"]]["componentType"] == glb.UINT
    t = ind.reshape(-1, 3).astype(int)
    np.testing.assert_array_equal(t, tri[:, ::-1])  # counter-clockwise seen from +z (the viewer), as .obj/.ply
    p = att["POSITION"].astype(np.float64)
    assert (np.cross(p[t[:, 1]] - p[t[:, 0]], p[t[:, 2]] - p[t[:, 0]])[:, 2] > 0).all()
    n = att["NORMAL"]
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-6)
    assert (n[:, 2] > 0.5).all()  # a sheet facing the viewer
    np.testing.assert_allclose(att["TEXCOORD_0"], np.stack([(v[:, 0] - 0.5) / 30, (v[:, 1] - 0.5) / 20], 1),
                               atol=1e-7)
  # the texture is the photo, losslessly
  assert doc["images"][0]["mimeType"] == "image/png"
  tex = cv2.imdecode(np.frombuffer(g.image(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
  np.testing.assert_array_equal(tex, img)
  # a capped texture is smaller; the UVs (relative) are unchanged
  small = glb.read_glb(glb.build_glb(img, [v0], tri, max_texture_side=15))
  assert cv2.imdecode(np.frombuffer(small.image(), np.uint8), cv2.IMREAD_COLOR).shape == (10, 15, 3)
  uv = small.json["meshes"][0]["primitives"][0]["attributes"]["TEXCOORD_0"]
  np.testing.assert_array_equal(small.accessor(uv), g.accessor(doc["meshes"][0]["primitives"][0]["attributes"][
      "TEXCOORD_0"]))


def test_glb_vertex_normals_closed_form():
  # a flat square faces +z; on a roof, sums of the adjacent triangles' area-weighted normals
  v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float64)
  np.testing.assert_allclose(glb.vertex_normals(v, np.array([[0, 1, 2], [0, 2, 3]])), [[0, 0, 1]] * 4)
  roof = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 2, 0], [1, 2, 0]], np.float64)
  t = np.array([[0, 1, 3], [0, 3, 2], [2, 3, 5], [2, 5, 4]])
  n = glb.vertex_normals(roof, t)
  np.testing.assert_allclose(n[2], np.array([0, 1, 3]) / np.sqrt(10), atol=1e-6)  # (0,-1,1) + 2 (0,1,1)
  np.testing.assert_allclose(n[0], [0, -1, 1] / np.sqrt(2), atol=1e-6)
  np.testing.assert_allclose(glb.vertex_normals(np.zeros((2, 3)), np.zeros((0, 3), int)), [[0, 0, 1]] * 2)


def test_glb_vertex_colors_and_bad_input(tmp_path):
  img = np.zeros((20, 30, 3), np.uint8)
  img[..., 1] = 180
  v, tri = grid_mesh()
  g = glb.read_glb(glb.build_glb(img, [v], tri, texture=False))
  prim = g.json["meshes"][0]["primitives"][0]
  assert "images" not in g.json and "TEXCOORD_0" not in prim["attributes"]
  acc = g.json["accessors"][prim["attributes"]["COLOR_0"]]
  assert acc["normalized"] and acc["type"] == "VEC4" and acc["componentType"] == glb.UBYTE
  np.testing.assert_array_equal(g.accessor(prim["attributes"]["COLOR_0"]), np.tile([0, 180, 0, 255], (len(v), 1)))
  empty = glb.read_glb(glb.build_glb(img, [], tri))
  assert "meshes" not in empty.json and empty.bin == b"" and empty.json["nodes"][0]["name"] == "image"
  with pytest.raises(ValueError, match="outside"):
    glb.build_glb(img, [v], tri + 1)
  with pytest.raises(ValueError, match="uint8"):
    glb.build_glb(img.astype(np.float32), [v], tri)
  with pytest.raises(ValueError, match="bad glb header"):
    glb.read_glb(b"glTF" + bytes(20))


# --------------------------------------------------------------------------------------------- page

def test_page_is_self_contained(face):
  img, v, tri = face
  page = viewer.build_page(img, [v], tri, title="a <b> & c", note='say "hi" </script>')
  low = page.lower()
  for bad in ("http://", "https://", "<link", "@import", "<iframe", "<object", "<embed"):
    assert bad not in low, bad
  assert not re.search(r"[^a-z]url\(", low)  # no CSS url(...) (createObjectURL( is a blob of the page's own bytes)
  assert re.findall(r"<script[^>]*>", low) == ["<script>"]  # one inline script, no src
  assert all(u.startswith("data:") for u in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page))
  assert not re.search(r"""(?:src|href)\s*=\s*['"]?//""", page)
  assert "default-src 'none'" in page  # the CSP forbids any fetch the page might still try
  assert "a &lt;b&gt; &amp; c" in page and page.count("</script>") == 1  # the note cannot close the script
  # the embedded mesh is exactly the .glb
  b64 = re.search(r'const GLB = "([A-Za-z0-9+/=]*)"', page).group(1)
  assert base64.b64decode(b64) == glb.build_glb(img, [v], tri)


# --------------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """The tiny 2DASL workdir of tests/test_predict.py (initial state: near-mean-face predictions)."""
  from tests.helpers.fakes import tiny_2dasl_workdir
  return tiny_2dasl_workdir(tmp_path_factory.mktemp("ckpt"))


def test_cli_writes_glb_and_viewer(workdir, face, tmp_path):
  """predict on the synthetic face pasted in a noise canvas: <stem>.glb + <stem>.html listed in results.json, in
  the .obj's frame; none with --no_viewer; the page renders (when chromium is installed)."""
  from jface.core import mesh_io
  from jface.data.wild import write_landmarks_csv
  from jface.inference import cli
  img, v, tri = face
  a = synthetic.numpy_arrays()
  canvas = np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)
  canvas[50:170, 60:180] = img
  cv2.imwrite(str(tmp_path / "face.png"), canvas[..., ::-1])
  write_landmarks_csv(str(tmp_path / "lm.csv"), ["face.png"], (v[a["keypoints"], :2] + [60, 50])[None])
  common = ["--checkpoint", workdir, "--landmarks", str(tmp_path / "lm.csv"), "--detector", "full"]
  assert cli.main([str(tmp_path / "face.png"), "--out", str(tmp_path / "out"), *common]) == 0
  rec = json.loads((tmp_path / "out" / "results.json").read_text())["images"][0]
  assert rec["viewer"] == {"glb": "face.glb", "html": "face.html"}
  g = glb.read_glb(str(tmp_path / "out" / "face.glb"))
  pos = g.accessor(g.json["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
  obj = mesh_io.read_mesh(str(tmp_path / "out" / rec["faces"][0]["mesh"]["obj"]))
  np.testing.assert_allclose(pos, obj["vertices"], atol=2e-3)  # the same frame as the .obj
  assert cli.main([str(tmp_path / "face.png"), "--out", str(tmp_path / "out2"), "--no_viewer", *common]) == 0
  rec = json.loads((tmp_path / "out2" / "results.json").read_text())["images"][0]
  assert "viewer" not in rec and not [p for p in os.listdir(tmp_path / "out2") if p.endswith((".glb", ".html"))]
  if CHROMIUM:  # the page predict wrote renders the predicted mesh
    shot, marker = shoot(str(tmp_path / "out" / "face.html"), tmp_path)
    assert marker == f"webgl:{len(tri)}" and foreground(stage(shot)).mean() > 0.02


# --------------------------------------------------------------------------------------------- screenshots

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no working chromium (apt-get install chromium): "
                                                             "no headless browser to render the viewer page")


@needs_chromium
@pytest.mark.parametrize("renderer", ["webgl", "2d"])
def test_viewer_screenshot_shows_textured_upright_face(face, tmp_path, renderer):
  _, v, tri = face
  centre = np.median(v[:, :2], axis=0)
  page = tmp_path / "quad.html"
  page.write_text(viewer.build_page(quadrants((120, 120), centre), [v], tri, title="quadrants"))
  shot, marker = shoot(str(page), tmp_path, *(["--disable-webgl"] if renderer == "2d" else []))
  assert marker == f"{renderer}:{len(tri)}"
  region = stage(shot)
  fg = foreground(region)
  assert fg.mean() > 0.05, "the 3D canvas is blank"
  r, g, b = (region[..., k] for k in range(3))
  classes = {"red": (r > 2 * g + 20) & (r > 2 * b + 20), "blue": (b > 2 * r + 20) & (b > 2 * g + 20),
             "green": (g > 2 * r + 20) & (g > 2 * b + 20),
             "yellow": (r > 2 * b + 20) & (g > 2 * b + 20) & (np.minimum(r, g) > 0.6 * np.maximum(r, g))}
  assert sum(c[fg].mean() for c in classes.values()) > 0.8, "the mesh is not drawn in the texture's colours"
  yx = {k: np.argwhere(c & fg).mean(0) for k, c in classes.items() if (c & fg).sum() > 0.02 * fg.sum()}
  assert set(yx) == set(classes), f"missing quadrants: {set(classes) - set(yx)}"
  assert yx["red"][1] < yx["blue"][1] and yx["green"][1] < yx["yellow"][1], "mirrored"
  assert yx["red"][0] < yx["green"][0] and yx["blue"][0] < yx["yellow"][0], "upside down"


@needs_chromium
def test_viewer_screenshot_empty_mesh_is_blank(face, tmp_path):
  """The check above can fail: a page without a mesh leaves the canvas at its background colour."""
  img, _, tri = face
  page = tmp_path / "empty.html"
  page.write_text(viewer.build_page(img, [], tri, title="empty"))
  shot, marker = shoot(str(page), tmp_path)
  assert marker == "webgl:0"
  assert foreground(stage(shot)).mean() < 1e-3
