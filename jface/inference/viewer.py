"""A self-contained HTML 3D viewer per image: the overlay picture beside the textured face meshes, which the
reader can rotate (drag), zoom (wheel) and reset (button, double click).

``page_html(glb, picture)`` inlines everything: the ``.glb`` of ``jface.inference.glb`` (meshes + the photo as a
PNG texture) and the overlay JPEG as base64, the CSS, and a small hand-written renderer; a Content-Security-Policy
(``default-src 'none'``) forbids any network request. The script parses the GLB (JSON + BIN chunks, accessors),
merges every mesh (all faces share the root node's uniform transform, so node transforms are not needed to frame
them) and draws with

* WebGL (2, else 1 + ``OES_element_index_uint``): perspective camera around the meshes' bounding sphere, depth
  test, the photo texture (times ``COLOR_0`` when present) lit by an ambient + diffuse + faint specular light
  from the upper left, two-sided;
* else a 2D canvas painter's algorithm: triangles sorted far to near, each filled flat with the texture colour
  at its centroid and the same light (open ``page.html#2d`` to force it).

The page reports what ran on ``<html data-rendered="webgl:T">`` (``2d:T``, ``error:...``; T = triangles) and the
canvas rectangle (CSS pixels) on ``data-canvas="x,y,w,h"``, for headless tests (``tests/test_viewer.py``).

``save_viewer(stem, image, meshes, tri)`` writes ``stem.glb`` and ``stem.html`` (the predict command's files).
"""
from __future__ import annotations

import base64
import html
import json
import re
from typing import Optional, Sequence

import numpy as np

from jface.inference import glb as glb_lib

BACKGROUND = (43, 47, 54)  # the 3D canvas' clear colour (RGB)

_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
  content="default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__ - jface 3D</title>
<style>
html,body{margin:0;height:100%;background:#f2f2f2;color:#222;font:14px system-ui,sans-serif}
header{display:flex;gap:14px;align-items:center;height:40px;padding:0 12px;white-space:nowrap}
header h1{font-size:15px;margin:0;overflow:hidden;text-overflow:ellipsis}
header span{color:#666;overflow:hidden;text-overflow:ellipsis}
main{display:flex;height:calc(100% - 40px)}
main>div{flex:1 1 50%;min-width:0;display:flex;align-items:center;justify-content:center}
#pic{background:#e4e4e4}
#pic img{max-width:100%;max-height:100%;object-fit:contain}
#stage{position:relative;background:rgb(__BG__);touch-action:none;cursor:grab}
#stage canvas{position:absolute;left:0;top:0;width:100%;height:100%}
</style></head>
<body>
<header><h1>__TITLE__</h1><button id="reset">Reset view</button><span id="info">loading...</span></header>
<main><div id="pic"><img alt="faces found" src="data:image/jpeg;base64,__PICTURE__"></div>
<div id="stage"><canvas id="view"></canvas></div></main>
<script>
"use strict";
const GLB = "__GLB__", NOTE = __NOTE__, BG = [__BG__].map(c => c / 255);
const LIGHT = (() => { const l = [-0.35, 0.45, 1], n = Math.hypot(...l); return l.map(x => x / n); })();

function parseGLB(bytes) {  // -> {json, view(i), accessor(i)} of a binary glTF
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 12 || dv.getUint32(0, true) !== 0x46546C67) throw new Error("not a glb");
  let json = null, bin = new Uint8Array(0);
  for (let off = 12; off + 8 <= bytes.length;) {
    const n = dv.getUint32(off, true), type = dv.getUint32(off + 4, true), c = bytes.subarray(off + 8, off + 8 + n);
    if (type === 0x4E4F534A) json = JSON.parse(new TextDecoder().decode(c));
    else if (type === 0x004E4942) bin = c;
    off += 8 + n;
  }
  const view = i => {
    const v = json.bufferViews[i], o = v.byteOffset || 0;
    return bin.subarray(o, o + v.byteLength);
  };
  const TYPES = {5126: Float32Array, 5125: Uint32Array, 5123: Uint16Array, 5121: Uint8Array};
  const accessor = i => {
    const a = json.accessors[i], T = TYPES[a.componentType];
    const n = {SCALAR: 1, VEC2: 2, VEC3: 3, VEC4: 4}[a.type] * a.count, o = a.byteOffset || 0;
    return new T(view(a.bufferView).slice(o, o + n * T.BYTES_PER_ELEMENT).buffer);
  };
  return {json, view, accessor};
}

function mergeMeshes(g) {  // all primitives -> one indexed mesh: pos, nrm (3/vertex), uv (2), col (3, 0-1), idx
  const parts = [];
  for (const m of g.json.meshes || []) for (const p of m.primitives) {
    const a = p.attributes, get = k => a[k] === undefined ? null : g.accessor(a[k]);
    const pos = get("POSITION"), nv = pos.length / 3;
    parts.push({pos, nv, nrm: get("NORMAL"), uv: get("TEXCOORD_0"), col: get("COLOR_0"),
                idx: p.indices === undefined ? Uint32Array.from({length: nv}, (_, i) => i) : g.accessor(p.indices)});
  }
  const NV = parts.reduce((s, p) => s + p.nv, 0), NI = parts.reduce((s, p) => s + p.idx.length, 0);
  const m = {pos: new Float32Array(3 * NV), nrm: new Float32Array(3 * NV), uv: new Float32Array(2 * NV),
             col: new Float32Array(3 * NV).fill(1), idx: new Uint32Array(NI), faces: parts.length};
  let v0 = 0, i0 = 0;
  for (const p of parts) {
    m.pos.set(p.pos, 3 * v0);
    if (p.nrm) m.nrm.set(p.nrm, 3 * v0); else for (let i = 0; i < p.nv; i++) m.nrm[3 * (v0 + i) + 2] = 1;
    if (p.uv) m.uv.set(p.uv, 2 * v0);
    if (p.col) {
      const k = p.col.length / p.nv;
      const s = p.col instanceof Float32Array ? 1 : p.col instanceof Uint8Array ? 255 : 65535;
      for (let i = 0; i < p.nv; i++) for (let c = 0; c < 3; c++) m.col[3 * (v0 + i) + c] = p.col[k * i + c] / s;
    }
    for (let i = 0; i < p.idx.length; i++) m.idx[i0 + i] = p.idx[i] + v0;
    v0 += p.nv; i0 += p.idx.length;
  }
  const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < m.pos.length; i++) {
    lo[i % 3] = Math.min(lo[i % 3], m.pos[i]);
    hi[i % 3] = Math.max(hi[i % 3], m.pos[i]);
  }
  m.center = NV ? lo.map((l, k) => (l + hi[k]) / 2) : [0, 0, 0];
  let r2 = 0;
  for (let i = 0; i < NV; i++) {
    let d2 = 0;
    for (let k = 0; k < 3; k++) d2 += (m.pos[3 * i + k] - m.center[k]) ** 2;
    r2 = Math.max(r2, d2);
  }
  m.radius = Math.sqrt(r2) || 1;
  return m;
}

function loadTexture(g) {  // -> a promise of the first glTF image (an <img> of a blob: URL), or of null
  const im = (g.json.images || [])[0];
  if (!im) return Promise.resolve(null);
  return new Promise((resolve, reject) => {  // an image load (unlike createImageBitmap) holds headless virtual time
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("cannot decode the texture"));
    img.src = URL.createObjectURL(new Blob([g.view(im.bufferView)], {type: im.mimeType}));
  });
}

function camera(state, w, h, m) {  // rotation (rows), centre, 1/radius, x/y focal scales, depth range
  const cy = Math.cos(state.yaw), sy = Math.sin(state.yaw), cp = Math.cos(state.pitch), sp = Math.sin(state.pitch);
  const R = [cy, 0, sy, sp * sy, cp, -sp * cy, -cp * sy, sp, cp * cy];  // Rx(pitch) Ry(yaw)
  const D = 3, f = state.zoom * 0.95 * Math.sqrt(D * D - 1), a = w / h;
  return {R, c: m.center, inv: 1 / m.radius, sx: a >= 1 ? f / a : f, sy: a >= 1 ? f : f * a, D,
          near: D - 1.05, far: D + 1.05};
}

function webglRenderer(canvas, m, photo) {  // -> draw(cam), or throws when WebGL is unusable
  const opt = {antialias: true, preserveDrawingBuffer: true};
  const gl = canvas.getContext("webgl2", opt) || canvas.getContext("webgl", opt);
  if (!gl) throw new Error("no WebGL");
  if (!(gl instanceof WebGL2RenderingContext) && !gl.getExtension("OES_element_index_uint"))
    throw new Error("no uint32 indices");
  const sh = (type, src) => {
    const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  };
  const prog = gl.createProgram();
  gl.attachShader(prog, sh(gl.VERTEX_SHADER, `
    attribute vec3 aPos, aNrm, aCol; attribute vec2 aUv;
    uniform mat3 uR; uniform vec3 uC; uniform float uInv; uniform vec2 uS; uniform vec3 uDepth;
    varying vec3 vN, vCol; varying vec2 vUv;
    void main() {
      vec3 q = uR * ((aPos - uC) * uInv);
      float w = uDepth.x - q.z, n = uDepth.y, f = uDepth.z;
      gl_Position = vec4(q.xy * uS, (w * (f + n) - 2.0 * f * n) / (f - n), w);
      vN = uR * aNrm; vCol = aCol; vUv = aUv;
    }`));
  gl.attachShader(prog, sh(gl.FRAGMENT_SHADER, `
    precision mediump float;
    uniform sampler2D uTex; uniform vec3 uLight;
    varying vec3 vN, vCol; varying vec2 vUv;
    void main() {
      vec3 n = normalize(vN);
      if (!gl_FrontFacing) n = -n;
      float d = max(dot(n, uLight), 0.0), s = pow(max(dot(n, normalize(uLight + vec3(0.0, 0.0, 1.0))), 0.0), 40.0);
      gl_FragColor = vec4(texture2D(uTex, vUv).rgb * vCol * (0.5 + 0.6 * d) + 0.06 * s, 1.0);
    }`));
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
  gl.useProgram(prog);
  for (const [name, data, k] of [["aPos", m.pos, 3], ["aNrm", m.nrm, 3], ["aCol", m.col, 3], ["aUv", m.uv, 2]]) {
    const loc = gl.getAttribLocation(prog, name);
    if (loc < 0) continue;
    gl.bindBuffer(gl.ARRAY_BUFFER, gl.createBuffer());
    gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, k, gl.FLOAT, false, 0, 0);
  }
  gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, gl.createBuffer());
  gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, m.idx, gl.STATIC_DRAW);
  gl.bindTexture(gl.TEXTURE_2D, gl.createTexture());
  let src = photo;
  const max = gl.getParameter(gl.MAX_TEXTURE_SIZE);
  if (src && Math.max(src.width, src.height) > max) {  // too large for this GPU: downscale (UVs are relative)
    const s = max / Math.max(src.width, src.height), c = document.createElement("canvas");
    c.width = Math.floor(src.width * s); c.height = Math.floor(src.height * s);
    c.getContext("2d").drawImage(src, 0, 0, c.width, c.height); src = c;
  }
  if (src) gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, src);
  else gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, 1, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4).fill(255));
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);  // no mipmaps: any texture size works
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
  const u = name => gl.getUniformLocation(prog, name);
  gl.uniform3fv(u("uLight"), LIGHT);
  gl.enable(gl.DEPTH_TEST);
  return cam => {
    const R = cam.R;
    gl.viewport(0, 0, canvas.width, canvas.height);
    gl.clearColor(BG[0], BG[1], BG[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.uniformMatrix3fv(u("uR"), false, [R[0], R[3], R[6], R[1], R[4], R[7], R[2], R[5], R[8]]);  // column-major
    gl.uniform3fv(u("uC"), cam.c);
    gl.uniform1f(u("uInv"), cam.inv);
    gl.uniform2f(u("uS"), cam.sx, cam.sy);
    gl.uniform3f(u("uDepth"), cam.D, cam.near, cam.far);
    if (m.idx.length) gl.drawElements(gl.TRIANGLES, m.idx.length, gl.UNSIGNED_INT, 0);
  };
}

function painterRenderer(canvas, m, photo) {  // 2D canvas fallback: flat triangles, far to near
  const ctx = canvas.getContext("2d"), nt = m.idx.length / 3, nv = m.pos.length / 3, I = m.idx;
  let tex = null;
  if (photo) try {
    const c = document.createElement("canvas"); c.width = photo.width; c.height = photo.height;
    const x = c.getContext("2d"); x.drawImage(photo, 0, 0); tex = x.getImageData(0, 0, c.width, c.height);
  } catch (e) { tex = null; }
  const base = new Float32Array(3 * nt);  // per triangle: texture at the centroid UV (grey without) x vertex colour
  for (let t = 0; t < nt; t++) {
    let uu = 0, vv = 0, o = -1;
    for (let k = 0; k < 3; k++) { uu += m.uv[2 * I[3 * t + k]] / 3; vv += m.uv[2 * I[3 * t + k] + 1] / 3; }
    if (tex) o = 4 * (Math.min(tex.height - 1, Math.max(0, Math.floor(vv * tex.height))) * tex.width
                      + Math.min(tex.width - 1, Math.max(0, Math.floor(uu * tex.width))));
    for (let c = 0; c < 3; c++) {
      let s = 0;
      for (let k = 0; k < 3; k++) s += m.col[3 * I[3 * t + k] + c] / 3;
      base[3 * t + c] = (o < 0 ? 200 : tex.data[o + c]) * s;
    }
  }
  const X = new Float32Array(nv), Y = new Float32Array(nv), Q = new Float32Array(3 * nv);
  const depth = new Float32Array(nt), order = new Uint32Array(nt);
  return cam => {
    const {R, c, inv, sx, sy, D} = cam, W = canvas.width, H = canvas.height;
    ctx.fillStyle = `rgb(${BG.map(x => Math.round(255 * x))})`;
    ctx.fillRect(0, 0, W, H);
    for (let i = 0; i < nv; i++) {
      const p = [0, 1, 2].map(k => (m.pos[3 * i + k] - c[k]) * inv);
      for (let k = 0; k < 3; k++) Q[3 * i + k] = R[3 * k] * p[0] + R[3 * k + 1] * p[1] + R[3 * k + 2] * p[2];
      const w = D - Q[3 * i + 2];
      X[i] = (0.5 + 0.5 * Q[3 * i] * sx / w) * W;
      Y[i] = (0.5 - 0.5 * Q[3 * i + 1] * sy / w) * H;
    }
    for (let t = 0; t < nt; t++) {
      order[t] = t;
      depth[t] = Q[3 * I[3 * t] + 2] + Q[3 * I[3 * t + 1] + 2] + Q[3 * I[3 * t + 2] + 2];
    }
    order.sort((a, b) => depth[a] - depth[b]);
    ctx.lineWidth = 0.7; ctx.lineJoin = "round";
    for (const t of order) {
      const a = 3 * I[3 * t], b = 3 * I[3 * t + 1], d = 3 * I[3 * t + 2];
      const e1 = [0, 1, 2].map(k => Q[b + k] - Q[a + k]), e2 = [0, 1, 2].map(k => Q[d + k] - Q[a + k]);
      const n = [e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]];
      const len = Math.hypot(...n) || 1, sgn = n[2] < 0 ? -1 : 1;
      const l = 0.5 + 0.6 * Math.max(0, sgn * (n[0] * LIGHT[0] + n[1] * LIGHT[1] + n[2] * LIGHT[2]) / len);
      const rgb = [0, 1, 2].map(k => Math.min(255, base[3 * t + k] * l) | 0);
      ctx.fillStyle = ctx.strokeStyle = `rgb(${rgb})`;
      ctx.beginPath();
      ctx.moveTo(X[a / 3], Y[a / 3]); ctx.lineTo(X[b / 3], Y[b / 3]); ctx.lineTo(X[d / 3], Y[d / 3]);
      ctx.closePath();
      ctx.fill(); ctx.stroke();
    }
  };
}

async function main() {
  const info = document.getElementById("info"), stage = document.getElementById("stage");
  let canvas = document.getElementById("view");
  try {
    const s = atob(GLB), bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    const g = parseGLB(bytes), m = mergeMeshes(g), photo = await loadTexture(g);
    let draw, mode = "webgl";
    try {
      if (location.hash === "#2d") throw new Error("2D forced");
      draw = webglRenderer(canvas, m, photo);
    } catch (e) {  // a fresh canvas: one that held a WebGL context cannot give a 2D one
      console.warn("WebGL unavailable, 2D fallback:", e.message);
      const c = canvas.cloneNode(); canvas.replaceWith(c); canvas = c;
      draw = painterRenderer(canvas, m, photo); mode = "2d";
    }
    const state = {yaw: 0, pitch: 0, zoom: 1};
    const render = () => {
      const dpr = window.devicePixelRatio || 1;
      const w = Math.max(1, Math.round(canvas.clientWidth * dpr)), h = Math.max(1, Math.round(canvas.clientHeight * dpr));
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
      draw(camera(state, w, h, m));
      const r = canvas.getBoundingClientRect();
      document.documentElement.dataset.canvas = [r.left, r.top, r.width, r.height].map(Math.round).join(",");
    };
    let pending = false;
    const later = () => {  // one render per animation frame
      if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); }
    };
    const reset = () => { Object.assign(state, {yaw: 0, pitch: 0, zoom: 1}); later(); };
    let last = null;
    stage.addEventListener("pointerdown", e => {
      last = [e.clientX, e.clientY];
      try { stage.setPointerCapture(e.pointerId); } catch (_) { /* a synthetic pointer: no capture */ }
      stage.style.cursor = "grabbing";
    });
    stage.addEventListener("pointermove", e => {
      if (!last) return;
      state.yaw += 0.01 * (e.clientX - last[0]);
      state.pitch = Math.max(-1.55, Math.min(1.55, state.pitch + 0.01 * (e.clientY - last[1])));
      last = [e.clientX, e.clientY]; later();
    });
    const up = () => { last = null; stage.style.cursor = "grab"; };
    stage.addEventListener("pointerup", up); stage.addEventListener("pointercancel", up);
    stage.addEventListener("wheel", e => {
      e.preventDefault();
      state.zoom = Math.max(0.2, Math.min(20, state.zoom * Math.exp(-0.0015 * e.deltaY)));
      later();
    }, {passive: false});
    stage.addEventListener("dblclick", reset);
    document.getElementById("reset").addEventListener("click", reset);
    window.addEventListener("resize", later);
    render();
    document.documentElement.dataset.rendered = `${mode}:${m.idx.length / 3}`;
    info.textContent = `${m.faces} face${m.faces === 1 ? "" : "s"}, ${m.idx.length / 3} triangles, `
      + `${mode === "webgl" ? "WebGL" : "2D canvas (no WebGL)"} -- drag: rotate, wheel: zoom${NOTE ? " -- " + NOTE : ""}`;
  } catch (e) {
    document.documentElement.dataset.rendered = "error:" + e.message;
    info.textContent = "cannot show the mesh: " + e.message;
  }
}
main();
</script></body></html>
"""


def dense_note(dense_shapes) -> str:
  """The page's warning for faces whose mesh is the posed mean shape (``dense_shape`` "mean"), else ""."""
  return ("mean shape: identity and expression are not applied (no dense bases)"
          if any(d == "mean" for d in dense_shapes) else "")


def encode_jpeg(image: np.ndarray, max_side: int = 1600, quality: int = 90) -> bytes:
  """JPEG bytes of an RGB uint8 image, downscaled (area) to ``max_side`` when larger."""
  import cv2
  img = np.asarray(image)
  h, w = img.shape[:2]
  if max(h, w) > max_side:
    s = max_side / max(h, w)
    img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
  ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise ValueError("JPEG encoding failed")
  return buf.tobytes()


def page_html(glb: bytes, picture: bytes, title: str = "jface", note: str = "") -> str:
  """The viewer page (a str) of ``glb`` bytes (``jface.inference.glb.build_glb``) beside ``picture`` (JPEG bytes),
  with nothing to fetch: everything is inline."""
  values = {"TITLE": html.escape(title), "NOTE": json.dumps(note).replace("<", "\\u003c"),
            "BG": ",".join(map(str, BACKGROUND)), "PICTURE": base64.b64encode(picture).decode("ascii"),
            "GLB": base64.b64encode(glb).decode("ascii")}
  return re.sub(r"__(TITLE|NOTE|BG|PICTURE|GLB)__", lambda m: values[m.group(1)], _TEMPLATE)


def build_page(image: np.ndarray, meshes: Sequence[np.ndarray], tri: np.ndarray,
               picture: Optional[np.ndarray] = None, title: str = "jface", note: str = "") -> str:
  """The page of ``meshes`` (image coordinates, sharing ``tri``) textured with ``image``, beside ``picture``
  (RGB, e.g. the overlay; default ``image``)."""
  glb = glb_lib.build_glb(image, meshes, tri)
  return page_html(glb, encode_jpeg(image if picture is None else picture), title, note)


def save_viewer(stem: str, image: np.ndarray, meshes: Sequence[np.ndarray], tri: np.ndarray,
                picture: Optional[np.ndarray] = None, title: str = "jface", note: str = "") -> dict:
  """Writes ``stem.glb`` (``glb.build_glb``) and ``stem.html`` (the viewer page embedding that .glb) ->
  {"glb": path, "html": path}."""
  glb = glb_lib.build_glb(image, meshes, tri)
  with open(stem + ".glb", "wb") as f:
    f.write(glb)
  page = page_html(glb, encode_jpeg(image if picture is None else picture), title, note)
  with open(stem + ".html", "w", encoding="utf-8") as f:
    f.write(page)
  return {"glb": stem + ".glb", "html": stem + ".html"}
