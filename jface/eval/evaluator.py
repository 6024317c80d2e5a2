"""The training loop's dev evaluation: ``config.data.dev`` (or a hold-out of ``config.data.train_3d``) read once
as an ``EvalData`` set, then at every evaluation the method's predict function over it, scored by the one
protocol (``jface.eval.protocol``) -- the same code path as ``evaluate.py --checkpoint``."""
from __future__ import annotations

from typing import Optional

import numpy as np

from jface.eval import data as eval_data
from jface.eval import metrics, protocol


class DevEvaluator:
  """Scores a training state on a fixed evaluation set.

  Args:
    method, config: the run's ``Method`` and config (the predict function is built once, eval-mode BN).
    face: the run's FaceModel.
    spec: a data spec (``eval_data.from_spec``).
    indices: optional subset of the set's rows (a hold-out of the training source, or the first ``dev_size``).
    landmarks: landmark input mode for models that take one (``protocol.landmark_input``; auto = the data's
      detector landmarks, or the exact ones for synthetic faces).
    batch_size: inference batch.
  """

  def __init__(self, method, config, face, spec: str, indices: Optional[np.ndarray] = None,
               landmarks: str = "auto", batch_size: int = 64):
    self.face, self.batch_size = face, batch_size
    data = eval_data.from_spec(spec, face)
    data = data if indices is None else data.take(np.asarray(indices))
    if data.dataset == "aflw2000_3d":  # the benchmark's 1998 images (drops two where the detector failed)
      data = data.take(np.nonzero(metrics.subset_mask(data.names, "1998"))[0])
    self.data = data
    images, self.problems = protocol.read_crops(self.data)
    # read and prepared once; every evaluation only runs the network
    self.inputs = protocol.model_inputs(self.data, method.input_fields(config), landmarks, face, images,
                                        log=lambda _: None)
    self.predict = method.make_predict_fn(config, method.build(config, bn_axis_name=None), dense=False)

  def __len__(self) -> int:
    return len(self.data)

  def __call__(self, state) -> dict:
    """-> {"key": "nme_2d_68" (or "nme_2d_21" for AFLW), "nme_2d_68": summary (bins, mean_of_bins, overall, n,
    n_failed), "nme_3d_68": the same for 3D NME when the ground truth is 3D, "errors": (N,) 2D NME percent}."""
    out = protocol.predict_inputs(self.predict, state, self.face, self.inputs, self.problems, self.batch_size)
    res = protocol.score(self.data, out, self.face, self.problems, dense=False)
    key = f"nme_2d_{res['npts']}"
    result = {"key": key, "errors": np.asarray(res["errors"][key])}
    for k, s in res["summaries"].items():
      result[k] = {"bins": [float(b) for b in s["bins"]], "mean_of_bins": float(s["mean_of_bins"]),
                   "overall": float(s["overall"]), "n": int(s["n"]), "n_failed": int(s["n_failed"])}
    return result
