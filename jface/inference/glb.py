"""Binary glTF 2.0 (``.glb``) of face meshes with the photo as their texture: a small writer and reader (numpy,
struct, json; no dependency).

``build_glb(image, meshes, tri)`` -> bytes: one glTF mesh + node per face, all children of a root node ``image``.
Each mesh has one triangle primitive with

* ``POSITION`` float32 VEC3 (accessor ``min``/``max`` as the spec requires): the image coordinates in
  ``jface.inference.outputs.viewer_frame``, i.e. ``(x, H + 1 - y, z)`` in pixels, x right, y up, z towards the
  viewer -- glTF's right-handed y-up frame with the face looking along +z (glTF's "front"). The root node scales
  pixels by ``1 / max(H, W)`` and centres the image (so the scene is about one unit wide);
* ``NORMAL`` float32 VEC3: per-vertex, area-weighted from the (outward-wound) triangles, unit length;
* ``TEXCOORD_0`` float32 VEC2: ``((x - 0.5) / W, (y - 0.5) / H)`` -- the vertex's own pixel of the photo (image
  coordinates are 1-based pixel centres; glTF's UV origin is the image's top-left corner), so the texture is exact;
* ``COLOR_0`` (optional, ``colors=True``) unsigned-byte normalized VEC4: the bilinear image colour at the vertex
  (viewers multiply it with the texture, so it is off by default; written instead of the texture with
  ``texture=False``);
* indices uint32, wound counter-clockwise seen from outside (``outputs.outward_triangles``).

The photo is embedded once as a PNG (``image/png`` bufferView; at most 2048 px a side by default), shared by all
faces' material (metallic 0, roughness 1, double sided). Every bufferView starts on a 4-byte boundary; the JSON
chunk is padded with spaces and the BIN chunk with zeros to multiples of 4, as the GLB container requires.

``read_glb(data)`` -> ``Glb`` (json, bin, ``accessor(i)`` as numpy): for tests and tools.
"""
from __future__ import annotations

import json
import struct
from typing import NamedTuple, Optional, Sequence

import numpy as np

MAGIC, VERSION = 0x46546C67, 2          # b"glTF"
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942  # b"JSON", b"BIN\0"
FLOAT, UINT, UBYTE = 5126, 5125, 5121
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
_NCOMP = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
_DTYPE = {FLOAT: np.float32, UINT: np.uint32, UBYTE: np.uint8}


def vertex_normals(vertices: np.ndarray, tri: np.ndarray) -> np.ndarray:
  """(N, 3) float32 unit per-vertex normals: sums of the adjacent triangles' area-weighted normals (right-hand
  rule on ``tri``'s winding); vertices in no triangle get (0, 0, 1)."""
  v = np.asarray(vertices, np.float64)
  t = np.asarray(tri, np.int64)
  fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
  n = np.zeros_like(v)
  for k in range(3):
    np.add.at(n, t[:, k], fn)
  norm = np.linalg.norm(n, axis=1, keepdims=True)
  n = np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), [0.0, 0.0, 1.0])
  return n.astype(np.float32)


def texcoords(vertices: np.ndarray, width: int, height: int) -> np.ndarray:
  """(N, 2) float32 glTF UVs of image coordinates (1-based pixel centres): ((x - 0.5) / W, (y - 0.5) / H)."""
  v = np.asarray(vertices, np.float64)
  return np.stack([(v[:, 0] - 0.5) / width, (v[:, 1] - 0.5) / height], axis=1).astype(np.float32)


def encode_png(image: np.ndarray, max_side: int = 0) -> bytes:
  """PNG bytes of an RGB (H, W, 3) uint8 image, downscaled (area) to ``max_side`` when larger (0 = never); UVs
  are relative, so a smaller texture still maps exactly."""
  import cv2
  img = np.asarray(image)
  h, w = img.shape[:2]
  if max_side and max(h, w) > max_side:
    s = max_side / max(h, w)
    img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
  ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))
  if not ok:
    raise ValueError("PNG encoding failed")
  return buf.tobytes()


class _Builder:
  """Accumulates 4-byte-aligned bufferViews and accessors of one binary buffer."""

  def __init__(self):
    self.bin = bytearray()
    self.views, self.accessors = [], []

  def view(self, data: bytes, target: Optional[int] = None) -> int:
    self.bin += b"\0" * (-len(self.bin) % 4)
    bv = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(data)}
    if target:
      bv["target"] = target
    self.bin += data
    self.views.append(bv)
    return len(self.views) - 1

  def accessor(self, a: np.ndarray, ctype: int, kind: str, target: int, normalized: bool = False,
               bounds: bool = False) -> int:
    a = np.ascontiguousarray(a, _DTYPE[ctype])
    acc = {"bufferView": self.view(a.tobytes(), target), "componentType": ctype, "count": int(len(a)),
           "type": kind}
    if normalized:
      acc["normalized"] = True
    if bounds:
      flat = a.reshape(len(a), -1)
      acc["min"], acc["max"] = flat.min(0).tolist(), flat.max(0).tolist()
    self.accessors.append(acc)
    return len(self.accessors) - 1


def build_glb(image: np.ndarray, meshes: Sequence[np.ndarray], tri: np.ndarray, *, texture: bool = True,
              colors: bool = False, max_texture_side: int = 2048, names: Optional[Sequence[str]] = None) -> bytes:
  """The ``.glb`` bytes of ``meshes`` (each (N, 3) image coordinates, sharing the 0-based triangles ``tri``
  (T, 3)) on ``image`` (H, W, 3) uint8 RGB: see the module docstring. The texture is the photo downscaled to
  ``max_texture_side`` (0 = full size; UVs are relative, so they still map exactly). ``meshes`` may be empty (a
  scene without meshes: only the texture-less root node). ``names``: the meshes' and nodes' (default faceK)."""
  img = np.asarray(image)
  if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
    raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
  h, w = img.shape[:2]
  tri = np.asarray(tri)
  if tri.ndim != 2 or tri.shape[1] != 3:
    raise ValueError(f"tri must be (T, 3), got shape {tri.shape}")
  from jface.inference.outputs import mesh_colors, outward_triangles, viewer_frame
  b = _Builder()
  doc_meshes, nodes = [], [{"name": "image", "children": []}]
  material = None
  if meshes and texture:
    b.view(encode_png(img, max_texture_side))
    material = {"name": "photo", "doubleSided": True, "pbrMetallicRoughness": {
        "baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": 1.0}}
  elif meshes:
    material = {"name": "vertex_colors", "doubleSided": True,
                "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0}}
  zs = []
  for k, verts in enumerate(meshes):
    verts = np.asarray(verts, np.float64)
    if verts.ndim != 2 or verts.shape[1] != 3 or not len(verts):
      raise ValueError(f"mesh {k}: vertices must be (N>0, 3), got shape {verts.shape}")
    if tri.size and (tri.min() < 0 or tri.max() >= len(verts)):
      raise ValueError(f"mesh {k}: triangle indices outside [0, {len(verts)})")
    if not np.isfinite(verts).all():
      raise ValueError(f"mesh {k}: non-finite vertices")
    pos = viewer_frame(verts, h)
    t = outward_triangles(pos, tri)
    attrs = {"POSITION": b.accessor(pos, FLOAT, "VEC3", ARRAY_BUFFER, bounds=True),
             "NORMAL": b.accessor(vertex_normals(pos, t), FLOAT, "VEC3", ARRAY_BUFFER)}
    if texture:
      attrs["TEXCOORD_0"] = b.accessor(texcoords(verts, w, h), FLOAT, "VEC2", ARRAY_BUFFER)
    if colors or not texture:
      rgba = np.concatenate([mesh_colors(img, verts), np.full((len(verts), 1), 255, np.uint8)], 1)
      attrs["COLOR_0"] = b.accessor(rgba, UBYTE, "VEC4", ARRAY_BUFFER, normalized=True)
    ind = b.accessor(t.reshape(-1), UINT, "SCALAR", ELEMENT_ARRAY_BUFFER, bounds=True)
    name = names[k] if names else f"face{k}"
    doc_meshes.append({"name": name, "primitives": [{"attributes": attrs, "indices": ind, "material": 0,
                                                     "mode": 4}]})
    nodes[0]["children"].append(len(nodes))
    nodes.append({"name": name, "mesh": k})
    zs.append(pos[:, 2].mean())
  s = 1.0 / max(h, w)
  nodes[0]["scale"] = [s, s, s]
  nodes[0]["translation"] = [-s * (w / 2 + 0.5), -s * (h / 2 + 0.5), -s * float(np.mean(zs)) if zs else 0.0]
  if not nodes[0]["children"]:
    del nodes[0]["children"]
  b.bin += b"\0" * (-len(b.bin) % 4)
  doc = {"asset": {"version": "2.0", "generator": "jface.inference.glb"}, "scene": 0,
         "scenes": [{"name": "jface", "nodes": [0]}], "nodes": nodes}
  if doc_meshes:
    doc.update(meshes=doc_meshes, materials=[material])
    if texture:
      doc.update(images=[{"bufferView": 0, "mimeType": "image/png", "name": "photo"}],
                 samplers=[{"magFilter": 9729, "minFilter": 9729, "wrapS": 33071, "wrapT": 33071}],
                 textures=[{"sampler": 0, "source": 0}])
  if b.bin:
    doc.update(buffers=[{"byteLength": len(b.bin)}], bufferViews=b.views, accessors=b.accessors)
  js = json.dumps(doc, separators=(",", ":")).encode()
  js += b" " * (-len(js) % 4)
  out = [struct.pack("<II", len(js), CHUNK_JSON), js]
  if b.bin:
    out += [struct.pack("<II", len(b.bin), CHUNK_BIN), bytes(b.bin)]
  body = b"".join(out)
  return struct.pack("<III", MAGIC, VERSION, 12 + len(body)) + body


def write_glb(path: str, image: np.ndarray, meshes: Sequence[np.ndarray], tri: np.ndarray, **kwargs) -> str:
  """Writes ``build_glb(image, meshes, tri, **kwargs)`` to ``path``; returns ``path``."""
  data = build_glb(image, meshes, tri, **kwargs)
  with open(path, "wb") as f:
    f.write(data)
  return path


class Glb(NamedTuple):
  """A parsed ``.glb``: the glTF JSON and the BIN chunk (b"" when absent)."""
  json: dict
  bin: bytes

  def view(self, i: int) -> bytes:
    bv = self.json["bufferViews"][i]
    o = bv.get("byteOffset", 0)
    return self.bin[o:o + bv["byteLength"]]

  def accessor(self, i: int) -> np.ndarray:
    """Accessor ``i`` as a (count,) or (count, components) array (tightly packed views only)."""
    a = self.json["accessors"][i]
    n = _NCOMP[a["type"]]
    dt = np.dtype(_DTYPE[a["componentType"]]).newbyteorder("<")
    bv = self.json["bufferViews"][a["bufferView"]]
    if bv.get("byteStride", dt.itemsize * n) != dt.itemsize * n:
      raise ValueError("interleaved bufferViews are not supported")
    arr = np.frombuffer(self.view(a["bufferView"]), dt, a["count"] * n, a.get("byteOffset", 0))
    return arr.reshape(a["count"], n) if n > 1 else arr

  def image(self, i: int = 0) -> bytes:
    """The encoded bytes of image ``i`` (PNG/JPEG) stored in a bufferView."""
    return self.view(self.json["images"][i]["bufferView"])


def read_glb(data) -> Glb:
  """Parses ``.glb`` bytes (or a path): checks the header (magic, version 2, total length) and the chunk layout
  (JSON first, 4-byte-aligned chunk lengths) -> ``Glb``. Raises ValueError on a malformed file."""
  if isinstance(data, str):
    with open(data, "rb") as f:
      data = f.read()
  data = bytes(data)
  if len(data) < 20:
    raise ValueError("not a glb: too short")
  magic, version, length = struct.unpack_from("<III", data)
  if magic != MAGIC or version != VERSION or length != len(data):
    raise ValueError(f"bad glb header: magic {magic:#x}, version {version}, length {length} of {len(data)}")
  chunks, off = [], 12
  while off < length:
    n, kind = struct.unpack_from("<II", data, off)
    if n % 4 or off + 8 + n > length:
      raise ValueError(f"bad chunk at byte {off}: length {n}")
    chunks.append((kind, data[off + 8:off + 8 + n]))
    off += 8 + n
  if not chunks or chunks[0][0] != CHUNK_JSON:
    raise ValueError("the first chunk of a glb must be JSON")
  doc = json.loads(chunks[0][1].decode("utf-8"))
  bins = [c for k, c in chunks[1:] if k == CHUNK_BIN]
  return Glb(doc, bins[0] if bins else b"")
