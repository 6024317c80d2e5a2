"""Triangle mesh files with per-vertex colour: Wavefront ``.obj`` and ``.ply`` (ascii or binary), their readers,
and bilinear colour sampling of an image at projected vertices.

Arrays: ``vertices`` (N, 3) float, ``triangles`` (T, 3) int **0-based** vertex ids, ``colors`` (N, 3) RGB either
uint8 in [0, 255] or float in [0, 1] (any other float range is a ``ValueError``).

* OBJ: ``v x y z r g b`` lines with r, g, b floats in [0, 1] (the vertex-colour extension MeshLab, Blender and
  Open3D read), then ``f i j k`` lines with **1-based** ids; ``# ...`` comment lines first.
* PLY: ``vertex`` with float ``x y z`` and uchar ``red green blue`` (0-255), ``face`` with
  ``list uchar int vertex_indices``; ``comment ...`` header lines; ``binary_little_endian`` (default) or ``ascii``.

The readers read what the writers write (and plain triangle OBJ/PLY files of the same layout); they return
``{"vertices" (N, 3) float64, "triangles" (T, 3) int64 0-based, "colors" (N, 3) float64 in [0, 1] or None,
"comments" list[str]}`` and raise ``ValueError`` (one line naming the file) on anything else.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np


# ------------------------------------------------------------------------------------------ checks

def _check(vertices, triangles, colors):
  v = np.asarray(vertices, np.float64)
  if v.ndim != 2 or v.shape[1] != 3:
    raise ValueError(f"vertices must be (N, 3), got shape {v.shape}")
  if not np.all(np.isfinite(v)):
    raise ValueError("vertices must be finite")
  t = np.asarray(triangles if triangles is not None else np.zeros((0, 3)), np.int64)
  if t.ndim != 2 or t.shape[1] != 3:
    raise ValueError(f"triangles must be (T, 3), got shape {t.shape}")
  if t.size and (t.min() < 0 or t.max() >= len(v)):
    raise ValueError(f"triangles index vertices outside [0, {len(v)})")
  return v, t, None if colors is None else colors_to_unit(colors, len(v))


def colors_to_unit(colors, n: Optional[int] = None) -> np.ndarray:
  """(N, 3) uint8 [0, 255] or float [0, 1] -> float64 [0, 1]. Raises ``ValueError`` otherwise."""
  c = np.asarray(colors)
  if c.ndim != 2 or c.shape[1] != 3 or (n is not None and len(c) != n):
    raise ValueError(f"colors must be (N, 3) with N = {n}, got shape {c.shape}")
  if c.dtype == np.uint8:
    return c.astype(np.float64) / 255.0
  c = c.astype(np.float64)
  if not np.all(np.isfinite(c)) or (c.size and (c.min() < -1e-6 or c.max() > 1 + 1e-6)):
    raise ValueError("float colors must be finite and in [0, 1] (pass uint8 for 0-255 values)")
  return np.clip(c, 0.0, 1.0)


def _one_line(s: str) -> str:
  return " ".join(str(s).split())


# ------------------------------------------------------------------------------------------ writers

def write_obj(path: str, vertices, triangles, colors=None, comments: Sequence[str] = ()) -> None:
  """Writes a Wavefront OBJ: ``# comment`` lines, ``v x y z [r g b]`` (colour floats in [0, 1]), ``f i j k``
  (1-based). ``triangles`` are 0-based (T, 3)."""
  v, t, c = _check(vertices, triangles, colors)
  with open(path, "w", encoding="utf-8") as f:
    for line in comments:
      f.write(f"# {_one_line(line)}\n")
    if len(v):
      if c is None:
        np.savetxt(f, v, fmt="v %.4f %.4f %.4f")
      else:
        np.savetxt(f, np.concatenate([v, c], 1), fmt="v %.4f %.4f %.4f %.4f %.4f %.4f")
    if len(t):
      np.savetxt(f, t + 1, fmt="f %d %d %d")


def write_ply(path: str, vertices, triangles, colors=None, comments: Sequence[str] = (),
              binary: bool = True) -> None:
  """Writes a PLY (``binary_little_endian`` or ``ascii``): float x y z, uchar red green blue (when ``colors``),
  faces as ``list uchar int vertex_indices`` (0-based)."""
  v, t, c = _check(vertices, triangles, colors)
  header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0"]
  header += [f"comment {_one_line(line)}" for line in comments]
  header += [f"element vertex {len(v)}", "property float x", "property float y", "property float z"]
  if c is not None:
    header += ["property uchar red", "property uchar green", "property uchar blue"]
  header += [f"element face {len(t)}", "property list uchar int vertex_indices", "end_header"]
  c8 = None if c is None else np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)
  with open(path, "wb") as f:
    f.write(("\n".join(header) + "\n").encode("ascii"))
    if binary:
      fields = [("xyz", "<f4", (3,))] + ([("rgb", "u1", (3,))] if c8 is not None else [])
      vert = np.empty(len(v), dtype=fields)
      vert["xyz"] = v
      if c8 is not None:
        vert["rgb"] = c8
      f.write(vert.tobytes())
      face = np.empty(len(t), dtype=[("n", "u1"), ("ids", "<i4", (3,))])
      face["n"] = 3
      face["ids"] = t
      f.write(face.tobytes())
    else:
      if len(v):
        if c8 is None:
          np.savetxt(f, v, fmt="%.4f %.4f %.4f")
        else:
          np.savetxt(f, np.concatenate([v, c8.astype(np.float64)], 1), fmt="%.4f %.4f %.4f %d %d %d")
      if len(t):
        np.savetxt(f, t, fmt="3 %d %d %d")


# ------------------------------------------------------------------------------------------ readers

def read_obj(path: str) -> dict:
  """Reads a triangle OBJ (``v`` with optional r g b, ``f`` with 1-based or negative ids, ``a/b/c`` forms).
  Colours > 1 are taken as 0-255. -> dict (module docstring)."""
  verts, cols, tris, comments = [], [], [], []
  with open(path, encoding="utf-8") as f:
    for k, line in enumerate(f, 1):
      s = line.strip()
      if not s:
        continue
      if s.startswith("#"):
        comments.append(s[1:].strip())
        continue
      parts = s.split()
      try:
        if parts[0] == "v":
          if len(parts) not in (4, 7):
            raise ValueError(f"a vertex line needs 3 or 6 numbers, got {len(parts) - 1}")
          verts.append([float(x) for x in parts[1:4]])
          cols.append([float(x) for x in parts[4:7]] if len(parts) == 7 else None)
        elif parts[0] == "f":
          if len(parts) != 4:
            raise ValueError(f"only triangles are supported, got a face of {len(parts) - 1} vertices")
          ids = [int(p.split("/")[0]) for p in parts[1:]]
          tris.append([i - 1 if i > 0 else len(verts) + i for i in ids])
      except ValueError as e:
        raise ValueError(f"{path}: line {k}: {e}") from None
  v = np.asarray(verts, np.float64).reshape(-1, 3)
  t = np.asarray(tris, np.int64).reshape(-1, 3)
  if t.size and (t.min() < 0 or t.max() >= len(v)):
    raise ValueError(f"{path}: face indices outside [1, {len(v)}]")
  colors = None
  if cols and all(c is not None for c in cols):
    colors = np.asarray(cols, np.float64)
    if colors.max(initial=0.0) > 1.0:
      colors = colors / 255.0
  elif any(c is not None for c in cols):
    raise ValueError(f"{path}: some vertices have colours and some do not")
  return {"vertices": v, "triangles": t, "colors": colors, "comments": comments}


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def read_ply(path: str) -> dict:
  """Reads a PLY with a ``vertex`` element (x y z [red green blue]) and a triangle ``face`` element, ascii or
  binary little endian. -> dict (module docstring)."""
  with open(path, "rb") as f:
    data = f.read()
  end = data.find(b"end_header")
  if not data.startswith(b"ply") or end < 0:
    raise ValueError(f"{path}: not a PLY file")
  body_start = data.index(b"\n", end) + 1
  header = data[:end].decode("ascii", "replace").splitlines()
  fmt, comments, elements = None, [], []
  for line in header[1:]:
    p = line.split()
    if not p:
      continue
    if p[0] == "format":
      fmt = p[1]
    elif p[0] == "comment":
      comments.append(line[len("comment"):].strip())
    elif p[0] == "element":
      elements.append({"name": p[1], "count": int(p[2]), "props": []})
    elif p[0] == "property":
      if not elements:
        raise ValueError(f"{path}: property before any element")
      if p[1] == "list":
        elements[-1]["props"].append((p[4], "list", _PLY_TYPES[p[2]], _PLY_TYPES[p[3]]))
      else:
        elements[-1]["props"].append((p[2], _PLY_TYPES[p[1]]))
  if fmt not in ("ascii", "binary_little_endian"):
    raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
  out = {}
  if fmt == "ascii":
    tokens = data[body_start:].split()
    pos = 0
    for el in elements:
      rows = []
      for _ in range(el["count"]):
        row = {}
        for prop in el["props"]:
          if prop[1] == "list":
            n = int(tokens[pos])
            row[prop[0]] = [float(x) for x in tokens[pos + 1:pos + 1 + n]]
            pos += 1 + n
          else:
            row[prop[0]] = float(tokens[pos])
            pos += 1
        rows.append(row)
      out[el["name"]] = rows
    verts = out.get("vertex", [])
    v = np.asarray([[r["x"], r["y"], r["z"]] for r in verts], np.float64).reshape(-1, 3)
    colors = (np.asarray([[r["red"], r["green"], r["blue"]] for r in verts], np.float64) / 255.0
              if verts and "red" in verts[0] else None)
    faces = [r["vertex_indices"] for r in out.get("face", [])]
  else:
    pos = body_start
    v, colors, faces = np.zeros((0, 3)), None, []
    for el in elements:
      if any(prop[1] == "list" for prop in el["props"]):
        if len(el["props"]) != 1:
          raise ValueError(f"{path}: binary list elements must have a single property")
        _, _, ct, it = el["props"][0]
        cnt = np.dtype(ct).itemsize
        isz = np.dtype("<" + it).itemsize
        rows = []
        for _ in range(el["count"]):
          n = int(np.frombuffer(data, ct, 1, pos)[0])
          rows.append(np.frombuffer(data, "<" + it, n, pos + cnt).tolist())
          pos += cnt + n * isz
        if el["name"] == "face":
          faces = rows
      else:
        dt = np.dtype([(prop[0], "<" + prop[1]) for prop in el["props"]])
        arr = np.frombuffer(data, dt, el["count"], pos)
        pos += dt.itemsize * el["count"]
        if el["name"] == "vertex":
          v = np.stack([arr["x"], arr["y"], arr["z"]], -1).astype(np.float64)
          if "red" in dt.names:
            colors = np.stack([arr["red"], arr["green"], arr["blue"]], -1).astype(np.float64) / 255.0
  if any(len(fc) != 3 for fc in faces):
    raise ValueError(f"{path}: only triangle faces are supported")
  t = np.asarray(faces, np.int64).reshape(-1, 3)
  if t.size and (t.min() < 0 or t.max() >= len(v)):
    raise ValueError(f"{path}: face indices outside [0, {len(v)})")
  return {"vertices": v, "triangles": t, "colors": colors, "comments": comments}


def read_mesh(path: str) -> dict:
  """``read_obj`` or ``read_ply`` by extension."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".obj":
    return read_obj(path)
  if ext == ".ply":
    return read_ply(path)
  raise ValueError(f"{path}: unknown mesh extension {ext!r} (.obj or .ply)")


# ------------------------------------------------------------------------------------ colour sampling

def sample_colors(image: np.ndarray, pts: np.ndarray) -> np.ndarray:
  """Bilinear samples of ``image`` (H, W, C) at ``pts`` (N, 2) image coordinates -> (N, C) float64.

  Points are 1-based pixel centres (array pixel ``[r, c]`` is at ``(x, y) = (c + 1, r + 1)``, as
  ``jface.core.geometry``'s image coordinates); points outside the image take the nearest border value
  (coordinates are clamped to ``[1, W] x [1, H]``); non-finite points give 0.
  """
  img = np.asarray(image)
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3:
    raise ValueError(f"image must be (H, W, C), got shape {img.shape}")
  pts = np.asarray(pts, np.float64)
  if pts.ndim != 2 or pts.shape[1] != 2:
    raise ValueError(f"pts must be (N, 2), got shape {pts.shape}")
  h, w = img.shape[:2]
  ok = np.all(np.isfinite(pts), -1)
  x = np.clip(np.where(ok, pts[:, 0], 1.0) - 1.0, 0.0, w - 1.0)
  y = np.clip(np.where(ok, pts[:, 1], 1.0) - 1.0, 0.0, h - 1.0)
  x0 = np.minimum(np.floor(x).astype(np.int64), w - 1)
  y0 = np.minimum(np.floor(y).astype(np.int64), h - 1)
  x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  f = img.astype(np.float64)
  top = f[y0, x0] * (1 - fx) + f[y0, x1] * fx
  bot = f[y1, x0] * (1 - fx) + f[y1, x1] * fx
  out = top * (1 - fy) + bot * fy
  return np.where(ok[:, None], out, 0.0)
