r"""Export a trained workdir's predict function for serving: ``jax.export`` (and optionally ONNX) with the weights
baked in, so the artifact needs neither the workdir nor jface's model code::

  python -m jface.export --checkpoint WORKDIR --out DIR [--which latest|best] [--dense] [--onnx]
      [--onnx_batch 1] [--platforms cpu,cuda] [--bfm_dir DIR] [--dense_bases_dir DIR]

Writes ``DIR/predict.jax`` (``jax.export.Exported.serialize()``: a StableHLO module lowered for every platform
in ``--platforms``; lowering for ``cuda`` works on a CPU-only machine), ``DIR/export.json`` (method, variant,
checkpoint step, crop size, platforms, jax version, inputs, outputs, the mean face's landmark-map points) and,
with ``--onnx``, ``DIR/predict.onnx`` (jax2onnx; ``pip install -e '.[onnx]'``). ``load(DIR)`` gives a callable.

ONNX (jax2onnx 0.17): a fixed batch (``--onnx_batch``, default 1; a symbolic one mis-converts 3DMM reshapes),
checked in onnxruntime against jax before it is written. Converts: 2DASL (ResNet or CNN, RGB or RGB + landmark
map; the map is drawn in the graph). Does not convert yet (one line says why; ``predict.jax`` is still written):
PRNet (ResFCN's ``ConvTranspose(transpose_kernel=True)`` and the batched 3 x 3 SVD of the pose fit), 2DASL with
``fit_start`` (the landmark fit's loops with traced trip counts).

The function is the method's ``make_predict_fn`` as ``jface.inference.predictor.Predictor.predict_crops`` runs
it, on face crops (what ``Predictor.find_faces`` returns as ``FaceCrop.crop``); the batch size B is symbolic.

Inputs (in this order):

* ``image``: (B, S, S, 3) uint8 RGB crops, S = the face model's ``crop_size`` (120), cut as jface crops
  (``jface.inference.faces`` / ``jface.core.crop``); other crops give other (wrong) answers.
* only for methods that read a landmark map (2DASL with ``use_flm``; ``export.json`` lists them):
  ``flm_landmarks`` (B, 68, 2) float32 crop pixels of the 68 map points and ``landmarks_mask`` (B, 68) bool
  (False or a non-finite point = not drawn; ``export.json``'s ``mean_flm_landmarks`` is the mean face's map,
  ``predict_crops``'s default). For a face without 68 source points ``Predictor`` feeds an empty map (no point
  drawn) when ``export.json``'s ``empty_map`` is true (trained with empty maps), else the mean face's.

Outputs (float32, in this order, those the method has): ``landmarks`` (B, 68, 3), ``pose`` (B, 3) yaw, pitch,
roll degrees, ``params`` (B, 62) whitened 3DMM parameters (2DASL), ``vertices`` (B, N, 3) with ``--dense``
(``export.json``'s ``topology`` names the mesh; the posed mean shape when the face model has only the dense mean,
``dense_shape``). Coordinates are crop pixels as ``jface.methods.base.FaceOutput``: 1-based pixel centres, x
right, y down, z in pixels (larger = nearer); ``jface.core.crop.crop_to_image`` maps them to the photo.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

ARTIFACT, META, ONNX_FILE = "predict.jax", "export.json", "predict.onnx"
OUTPUTS = ("landmarks", "pose", "params", "vertices")  # output order (those the method gives)
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
ONNX_HINT = "pip install -e '.[onnx]'"


class ExportError(ValueError):
  """An export that cannot be done (one-line message)."""


class OnnxConversionError(ExportError):
  """jax2onnx failed on a model whose jax export is written (one-line message)."""


def _predictor(checkpoint_dir: str, which: str, dense: bool, bfm_dir, dense_bases_dir):
  from jface.inference.predictor import Predictor
  return Predictor(checkpoint_dir, bfm_dir, which=which, dense=dense, dense_bases_dir=dense_bases_dir,
                   detector="haar", landmarks="none")


def serving_function(pred, dense: bool):
  """-> (fn, inputs, outputs): ``fn(*arrays) -> tuple`` of ``pred``'s predict function (dense or not) with the
  weights and face-model arrays it reads closed over (baked in as constants); ``inputs`` = [(name, shape
  without B, dtype)], ``outputs`` = the names of the tuple's arrays."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  size = pred.model.crop_size
  inputs = [("image", (size, size, 3), "uint8")]
  if pred.input_fields:
    inputs += [("flm_landmarks", (68, 2), "float32"), ("landmarks_mask", (68,), "bool")]
  predict = pred.predict_fn(dense)
  # predict reads params and batch_stats of the state, and some arrays of the face model
  leaves, tree = jax.tree_util.tree_flatten((pred.state.replace(opt_state={}, extra={}), pred.model))

  def outputs_of(values, *arrays):
    state, face = jax.tree_util.tree_unflatten(tree, values)
    batch = dict(zip([n for n, _, _ in inputs], arrays))
    if pred.input_fields:  # as predict_crops: non-finite points are not drawn
      m = batch["landmarks_mask"] & jnp.all(jnp.isfinite(batch["flm_landmarks"]), -1)
      batch["flm_landmarks"] = jnp.where(m[..., None], batch["flm_landmarks"], 0.0)
      batch["landmarks_mask"] = m
      batch = {k: batch[k] for k in ("image",) + tuple(pred.input_fields)}
    out = predict(state, face, batch)
    return {k: getattr(out, k) for k in OUTPUTS if getattr(out, k) is not None}

  # Only the arrays predict reads are baked in: closed over whole, jax would embed every array of the face model
  # (the jitted predict takes all of it; PRNet's artifact: 38 MB with the BFM's unused dense bases, 3.5 MB
  # without). A probe export with them as arguments tells which it keeps (module_kept_var_idx).
  specs = [jax.ShapeDtypeStruct(np.shape(v), v.dtype) for v in leaves]
  probe = jax.export.export(jax.jit(outputs_of), platforms=("cpu",))(specs, *_specs(inputs, 1))
  used = set(probe.module_kept_var_idx)
  names = [k for k in OUTPUTS if k in jax.tree_util.tree_unflatten(probe.out_tree, probe.out_avals)]

  def fn(*arrays):
    values = [v if i in used else jnp.zeros(v.shape, v.dtype) for i, v in enumerate(leaves)]
    out = outputs_of(values, *arrays)
    return tuple(out[k].astype(jnp.float32) for k in names)
  return fn, inputs, names


def _specs(inputs, batch):
  import jax
  import numpy as np
  return [jax.ShapeDtypeStruct((batch,) + tuple(s), np.dtype(d)) for _, s, d in inputs]


def _one_line(e: BaseException, limit: int = 300) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= limit else text[:limit] + " ..."


def onnx_available() -> Optional[str]:
  """None when jax2onnx and onnxruntime import, else the one-line reason (naming the extra)."""
  missing = []
  for mod in ("jax2onnx", "onnxruntime", "onnx"):
    try:
      __import__(mod)
    except ImportError:
      missing.append(mod)
  verb = "is" if len(missing) == 1 else "are"
  return None if not missing else f"{', '.join(missing)} {verb} not installed: {ONNX_HINT}"


def _load_onnx_plugins() -> None:
  """Imports only jax2onnx's jax and flax plugins (all jface's models need). jax2onnx otherwise imports every
  plugin on first use, including its Equinox ones, which build example models at import: measured 21 s of
  its first conversion on the 2-core CPU. Any other jax2onnx layout falls back to its own import."""
  import pathlib
  try:
    from jax2onnx.plugins import plugin_system as ps
    if ps._already_imported_plugins:
      return
    root = pathlib.Path(ps.__file__).parent
    if not all((root / sub).is_dir() for sub in ("jax", "flax")):
      return
    for sub in ("jax", "flax"):
      ps._import_tree(root / sub, f"jax2onnx.plugins.{sub}")
    ps._already_imported_plugins = True
  except (ImportError, AttributeError):
    pass


def _random_inputs(inputs, batch: int, crop_size: int):
  """Face-like test inputs: random crops and landmark-map points inside the crop."""
  import numpy as np
  rng = np.random.default_rng(0)
  arrays = {"image": rng.integers(0, 256, (batch, crop_size, crop_size, 3), dtype=np.uint8),
            "flm_landmarks": rng.uniform(1, crop_size, (batch, 68, 2)).astype(np.float32),
            "landmarks_mask": rng.uniform(size=(batch, 68)) > 0.1}
  return [arrays[n] for n, _, _ in inputs]


def export_onnx(fn: Callable, inputs, outputs: Sequence[str], path: str, batch: int = 1,
                crop_size: int = 120) -> None:
  """Converts ``fn`` (``serving_function``) with jax2onnx into one self-contained file at ``path``, with a fixed
  ``batch`` (0 = a symbolic batch dim "B"), and checks it in onnxruntime against ``fn`` on random inputs (batch
  2 when symbolic). Raises ``ExportError`` (one line) when a package is missing, ``OnnxConversionError`` when
  an op does not convert or the converted model does not run or match.

  A fixed batch is the default because jax2onnx 0.17 converts some reshapes under a symbolic batch with batch 1
  baked in (the 3DMM reshape of ``geometry``: onnxruntime then fails for B > 1)."""
  why = onnx_available()
  if why:
    raise ExportError(f"ONNX export: {why}")
  import jax
  import numpy as np
  import onnx
  import onnxruntime
  from jax2onnx import to_onnx
  specs = [jax.ShapeDtypeStruct((batch or "B",) + tuple(s), np.dtype(d)) for _, s, d in inputs]
  names = [n for n, _, _ in inputs]
  feed = _random_inputs(inputs, batch or 2, crop_size)
  want = [np.asarray(a) for a in jax.jit(fn)(*feed)]
  _load_onnx_plugins()
  # jax2onnx traces with its own patched primitives: no cached trace may go in (it would miss them) or stay
  # (later jax calls would meet primitives that do not lower, e.g. 'jax.numpy.isfinite')
  jax.clear_caches()
  try:
    model = to_onnx(fn, specs, model_name="jface_predict", input_names=names, output_names=list(outputs))
  except Exception as e:  # noqa: BLE001 -- jax2onnx raises many kinds for unsupported primitives
    raise OnnxConversionError(f"jax2onnx cannot convert this model ({type(e).__name__}: {_one_line(e)})") from None
  finally:
    jax.clear_caches()
  tmp = path + ".tmp"
  onnx.save_model(model, tmp)
  try:
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3  # errors only (jax2onnx's unused initialisers give warnings)
    got = onnxruntime.InferenceSession(tmp, opts, providers=["CPUExecutionProvider"]).run(
        None, dict(zip(names, feed)))
    for n, g, w in zip(outputs, got, want):
      err = float(np.max(np.abs(np.asarray(g, np.float64) - w)))
      if not err <= 1e-3 * (1 + float(np.max(np.abs(w)))):
        raise ValueError(f"output {n} differs from jax by {err:.3g}")
  except Exception as e:  # noqa: BLE001 -- onnxruntime errors (e.g. a reshape with a baked-in batch)
    os.remove(tmp)
    raise OnnxConversionError(f"the converted ONNX model fails in onnxruntime ({type(e).__name__}: "
                              f"{_one_line(e)})") from None
  os.replace(tmp, path)


def _check(out: str, platforms: Sequence[str], onnx: bool, onnx_batch: int) -> tuple:
  platforms = tuple(platforms)
  bad = [p for p in platforms if p not in KNOWN_PLATFORMS]
  if not platforms or bad:
    raise ExportError(f"unknown platforms {', '.join(bad) or '(none)'}; choose from {', '.join(KNOWN_PLATFORMS)}")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ExportError(f"--out {out} exists and is not a folder")
  if onnx_batch < 0:
    raise ExportError(f"--onnx_batch must be >= 0 (0 = symbolic), got {onnx_batch}")
  if onnx and onnx_available():
    raise ExportError(f"--onnx: {onnx_available()}")
  return platforms


def export(checkpoint_dir: str, out: str, *, which: str = "latest", dense: bool = False,
           platforms: Sequence[str] = ("cpu", "cuda"), onnx: bool = False, onnx_batch: int = 1,
           bfm_dir: Optional[str] = None, dense_bases_dir: Optional[str] = None,
           log: Callable[[str], None] = lambda s: None) -> dict:
  """Loads the workdir like ``Predictor`` and writes ``out/predict.jax`` and ``out/export.json`` (and with
  ``onnx`` ``out/predict.onnx``; ``onnx_batch``: see ``export_onnx``) -> the export.json dict. Raises
  ``CheckpointError``, ``MissingAssetError``, ``ExportError`` / ``ValueError`` (one line each); an ONNX
  conversion that fails raises ``OnnxConversionError`` after the jax export is written."""
  _check(out, platforms, onnx, onnx_batch)
  pred = _predictor(checkpoint_dir, which, dense, bfm_dir, dense_bases_dir)
  return export_predictor(pred, out, dense=dense, platforms=platforms, onnx=onnx, onnx_batch=onnx_batch, log=log,
                          source={"checkpoint": os.path.abspath(checkpoint_dir), "which": which})


def export_predictor(pred, out: str, *, dense: bool = False, platforms: Sequence[str] = ("cpu", "cuda"),
                     onnx: bool = False, onnx_batch: int = 1, log: Callable[[str], None] = lambda s: None,
                     source: Optional[dict] = None) -> dict:
  """``export`` of a loaded ``jface.inference.predictor.Predictor`` (``source``: extra export.json fields)."""
  import jax
  import numpy as np
  platforms = _check(out, platforms, onnx, onnx_batch)
  if dense and pred.dense_shape == "none":
    log(f"note: the face model {pred.model.name!r} has no dense shape: no vertices output")
  fn, inputs, outputs = serving_function(pred, dense)
  batch = jax.export.symbolic_shape("B")[0]
  try:
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(*_specs(inputs, batch))
  except Exception as e:  # noqa: BLE001 -- lowering errors come in many types
    raise ExportError(f"jax.export failed for platforms {','.join(platforms)}: {type(e).__name__}: "
                      f"{_one_line(e)}") from None
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise ExportError(f"cannot create --out {out}: {e.strerror or e}") from None
  with open(os.path.join(out, ARTIFACT), "wb") as f:
    f.write(exported.serialize())
  if os.path.exists(os.path.join(out, ONNX_FILE)):  # an earlier export's: the folder holds one export
    os.remove(os.path.join(out, ONNX_FILE))
  out_avals = exported.out_avals
  meta = {
      "method": pred.method.name, "variant": str(pred.config.get("variant", "")),
      **(source or {}), "step": int(np.asarray(pred.state.step)),
      "face_model": pred.model.name, "crop_size": int(pred.model.crop_size),
      "dense": bool(dense and "vertices" in outputs), "dense_shape": pred.dense_shape if dense else "none",
      "topology": pred.model.name if "vertices" in outputs else None,
      "platforms": list(exported.platforms), "jax_version": jax.__version__,
      "inputs": [{"name": n, "shape": ["B", *s], "dtype": d} for n, s, d in inputs],
      "outputs": [{"name": n, "shape": ["B", *[int(x) for x in a.shape[1:]]], "dtype": str(a.dtype)}
                  for n, a in zip(outputs, out_avals)],
      "coordinates": "crop pixels of the crop_size crop: 1-based pixel centres, x right, y down, z larger = nearer",
      "files": {"jax": ARTIFACT},
  }
  if pred.input_fields:
    meta["mean_flm_landmarks"] = pred.mean_flm.astype(np.float64).tolist()  # exact float32 values
    meta["empty_map"] = bool(pred.empty_map)
  error = None
  if onnx:
    try:
      export_onnx(fn, inputs, outputs, os.path.join(out, ONNX_FILE), onnx_batch, pred.model.crop_size)
      meta["files"]["onnx"] = ONNX_FILE
      meta["onnx_batch"] = int(onnx_batch) or "B"
    except OnnxConversionError as e:
      error = e
  with open(os.path.join(out, META), "w") as f:
    json.dump(meta, f, indent=1)
  if error is not None:
    raise error
  return meta


class Loaded:
  """A ``predict.jax`` export as a callable: ``loaded(image, flm_landmarks=None, landmarks_mask=None)`` (numpy;
  missing map inputs: the mean face's map, all points drawn) -> dict of numpy outputs (``meta["outputs"]``)."""

  def __init__(self, directory: str):
    import jax
    path = os.path.join(directory, ARTIFACT)
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(directory, META))):
      raise ExportError(f"no {ARTIFACT} and {META} in {directory}: write them with python -m jface.export")
    with open(os.path.join(directory, META)) as f:
      self.meta = json.load(f)
    with open(path, "rb") as f:
      self.exported = jax.export.deserialize(bytearray(f.read()))
    self.input_names = [i["name"] for i in self.meta["inputs"]]
    self.output_names = [o["name"] for o in self.meta["outputs"]]
    self._call = jax.jit(self.exported.call)

  def feed(self, image, flm_landmarks=None, landmarks_mask=None) -> List:
    """The positional numpy inputs of the export."""
    import numpy as np
    image = np.asarray(image, np.uint8)
    arrays = {"image": image}
    if "flm_landmarks" in self.input_names:
      n = len(image)
      pts = flm_landmarks if flm_landmarks is not None else np.broadcast_to(
          np.asarray(self.meta["mean_flm_landmarks"], np.float32), (n, 68, 2))
      arrays["flm_landmarks"] = np.asarray(pts, np.float32)
      arrays["landmarks_mask"] = (np.ones((n, 68), bool) if landmarks_mask is None
                                  else np.asarray(landmarks_mask, bool))
    return [arrays[k] for k in self.input_names]

  def __call__(self, image, flm_landmarks=None, landmarks_mask=None) -> Dict[str, Any]:
    import numpy as np
    outs = self._call(*self.feed(image, flm_landmarks, landmarks_mask))
    return {k: np.asarray(v) for k, v in zip(self.output_names, outs)}


def load(directory: str) -> Loaded:
  """The export in ``directory`` (``predict.jax`` + ``export.json``) as a callable (``Loaded``)."""
  return Loaded(directory)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI; returns 0 = done, 1 = the jax export is written but the ONNX one failed, 2 = nothing usable done."""
  ap = argparse.ArgumentParser(prog="python -m jface.export",
                               description="Export a trained jface workdir's predict function (jax.export, ONNX).")
  ap.add_argument("--checkpoint", required=True, help="train.py workdir")
  ap.add_argument("--out", required=True, help="output folder (predict.jax, export.json, predict.onnx)")
  ap.add_argument("--which", default="latest", choices=("latest", "best"))
  ap.add_argument("--dense", action="store_true", help="also output the dense vertices")
  ap.add_argument("--onnx", action="store_true", help=f"also write predict.onnx (jax2onnx; {ONNX_HINT})")
  ap.add_argument("--onnx_batch", type=int, default=1,
                  help="fixed batch of predict.onnx; 0 = a symbolic batch (jax2onnx 0.17 fails on it for 3DMM models)")
  ap.add_argument("--platforms", default="cpu,cuda", help="comma-separated jax.export platforms")
  ap.add_argument("--bfm_dir", default=None, help="face model (default: the checkpoint's config.bfm_dir)")
  ap.add_argument("--dense_bases_dir", default=None, help="folder with w_shp_sim.npy / w_exp_sim.npy")
  args = ap.parse_args(argv)
  from jface.core.face_model import MissingAssetError
  from jface.train import checkpoint

  def fail(msg, code=2) -> int:
    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
    return code

  platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
  try:
    checkpoint.read_config(args.checkpoint)  # fail early on a folder that is no workdir
    meta = export(args.checkpoint, args.out, which=args.which, dense=args.dense, platforms=platforms,
                  onnx=args.onnx, onnx_batch=args.onnx_batch, bfm_dir=args.bfm_dir,
                  dense_bases_dir=args.dense_bases_dir,
                  log=lambda s: print(s, file=sys.stderr))
  except OnnxConversionError as e:
    return fail(f"{e}; the jax export is written to {args.out}", 1)
  except (checkpoint.CheckpointError, MissingAssetError, ValueError, OSError) as e:
    return fail(e)
  outs = ", ".join(f"{o['name']} {tuple(o['shape'])}" for o in meta["outputs"])
  print(f"exported {meta['method']} ({meta['variant']}, step {meta['step']}) for {','.join(meta['platforms'])} "
        f"to {args.out}: {', '.join(meta['files'].values())}; inputs "
        f"{', '.join(i['name'] for i in meta['inputs'])}; outputs {outs}")
  return 0


if __name__ == "__main__":
  from jface import runtime
  runtime.setup()
  sys.exit(main())
