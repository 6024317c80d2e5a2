"""2DASL's ``fit_start`` option: the regressor's output is added to the 3DMM fit of its landmark-map points."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface import methods
from jface.core import fitting, geometry
from jface.methods.twodasl.fit_start import landmark_fit, zero_head
from jface.train import parallel
from tests.helpers.fakes import fake_batch, fake_config, load_config, random_face_model


def test_landmark_fit_recovers_landmarks_and_falls_back_to_the_mean():
  face = random_face_model()
  b = fake_batch(4, 0, True, size=120, face=face)
  mask = np.array(b["landmarks_mask"])
  mask[2] = False            # nothing drawn: the mean face
  mask[3, 6:] = False        # fewer than MIN_VISIBLE points: the mean face
  pts = np.array(b["flm_landmarks"])
  pts[1, 0] = np.nan         # a NaN point is ignored, not propagated
  pw = np.asarray(landmark_fit(face, pts, mask, 1.0))
  assert pw.shape == (4, 62) and np.all(np.isfinite(pw))
  np.testing.assert_array_equal(pw[2:], 0.0)
  fitted = np.asarray(geometry.landmarks2d(face, jnp.asarray(pw[:2])))
  mean_face = np.asarray(geometry.landmarks2d(face, jnp.zeros((1, 62))))[0]
  for i in range(2):
    seen = mask[i] & np.isfinite(pts[i, :, 0])
    err = np.median(np.linalg.norm(fitted[i] - b["flm_landmarks"][i], axis=-1)[seen])
    err0 = np.median(np.linalg.norm(mean_face - b["flm_landmarks"][i], axis=-1)[seen])
    assert err < 0.4 * err0, (err, err0)  # exact 3DMM landmarks: the fit (with its priors) is far closer
  want = fitting.fit_landmarks(face, pts[:2], mask[:2], weights=fitting.contour_weights(1.0))
  np.testing.assert_allclose(pw[:2], np.asarray(want), atol=1e-5)


def test_landmark_fit_has_no_gradient():
  face = random_face_model()
  b = fake_batch(2, 1, True, size=120, face=face)
  g = jax.grad(lambda p: jnp.sum(landmark_fit(face, p, b["landmarks_mask"], 0.03)))(jnp.asarray(b["flm_landmarks"]))
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_zero_head_zeroes_only_the_head():
  params = {"head": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}, "stem": {"kernel": jnp.ones(4)}}
  out = zero_head(params)
  assert float(jnp.abs(out["head"]["kernel"]).sum() + jnp.abs(out["head"]["bias"]).sum()) == 0.0
  np.testing.assert_array_equal(out["stem"]["kernel"], 1.0)
  with pytest.raises(ValueError, match="head"):
    zero_head({"stem": {}})


def test_untrained_model_predicts_the_fit():
  config = fake_config("cpu_base_flm", fit_start=True, image_size=120)
  method = methods.of_config(config)
  mods = method.build(config, bn_axis_name=None)
  state = method.init_state(config, mods)
  face = random_face_model()
  b = fake_batch(3, 2, True, size=120, face=face)
  batch = {k: jnp.asarray(b[k]) for k in ("image",) + tuple(method.input_fields(config))}
  out = method.make_predict_fn(config, mods)(state, face, batch)
  want = landmark_fit(face, b["flm_landmarks"], b["landmarks_mask"], config.fit_jaw_weight)
  np.testing.assert_allclose(np.asarray(out.params), np.asarray(want), atol=1e-6)
  # without the option the same network does not: its random head moves the output away from 0
  plain = fake_config("cpu_base_flm", image_size=120)
  p_mods = method.build(plain, bn_axis_name=None)
  p_out = method.make_predict_fn(plain, p_mods)(method.init_state(plain, p_mods), face, batch)
  assert float(jnp.max(jnp.abs(p_out.params - want))) > 1e-3


def test_cyc_step_with_fit_start_is_finite_and_learns():
  config = fake_config("cyc", fit_start=True, image_size=120)
  mesh = parallel.make_mesh(1)
  method = methods.of_config(config)
  mods = method.build(config)
  state = parallel.replicate(method.init_state(config, mods), mesh)
  step = parallel.data_parallel(method.make_train_step(config, mods), mesh, 2, 1, donate=False)
  face = random_face_model()
  batches = {"train_3d": parallel.shard_batch(fake_batch(4, 1, True, size=120, face=face), mesh),
             "train_2d": parallel.shard_batch(fake_batch(4, 2, False, size=120, face=face), mesh)}
  new, metrics = step(state, parallel.replicate(face, mesh), batches)
  assert set(metrics) == {"l3d", "l2d_con", "l3d_con", "cyc", "loss"}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  moved = jax.tree_util.tree_map(lambda a, c: float(np.max(np.abs(np.asarray(a) - np.asarray(c)))),
                                 new.params["head"], state.params["head"])
  assert max(jax.tree_util.tree_leaves(moved)) > 0


def test_fit_start_needs_the_landmark_map():
  config = fake_config("cpu_base", fit_start=True)
  with pytest.raises(ValueError, match="use_flm"):
    methods.of_config(config).check_config(config)


@pytest.mark.parametrize("variant", ["cpu_best", "cpu_fit"])
def test_cpu_best_is_the_fit_start_recipe(variant):
  c = load_config(variant)
  assert c.fit_start and c.use_flm and not (c.use_cyc or c.use_sc)
  assert c.data.holdout == 100 and c.num_steps == 4000 and c.l3d_weights == "3d"
  assert not load_config("cpu_base_flm").fit_start
