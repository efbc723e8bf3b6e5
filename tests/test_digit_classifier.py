"""The digit classifier behind FID / IS on digit data (gankd_jax.metrics.digit_classifier)."""
import jax
import numpy as np

from gankd_jax.metrics import digit_classifier as dc


def test_short_training_run_classifies_held_out_digits():
  _, accuracy = dc.train(steps=300, seed=1)
  assert accuracy >= 0.93, accuracy  # 300 of the shipped file's 1500 steps


def test_shipped_weights_reach_the_required_accuracy_and_give_features():
  variables = dc.load_weights()
  assert dc.accuracy(variables, "test") >= dc.REQUIRED_ACCURACY
  images, _ = dc.digits_split("test")
  out = jax.jit(dc.apply)(variables, images[:5])
  assert out["features"].shape == (5, dc.NUM_FEATURES) and out["logits"].shape == (5, 10)
  assert np.all(np.asarray(out["features"]) >= 0)  # after ReLU
  # 64x64 colour input is resized and greyed to the same prediction.
  colour = np.repeat(np.asarray(jax.image.resize(images[:5], (5, 64, 64, 1), "bilinear")), 3, -1)
  np.testing.assert_array_equal(np.argmax(jax.jit(dc.apply)(variables, colour)["logits"], -1),
                                np.argmax(out["logits"], -1))


def test_missing_or_foreign_weights_are_one_line_errors(tmp_path):
  import pytest
  with pytest.raises(ValueError, match="not found; make them with"):
    dc.load_weights(str(tmp_path / "none.npz"))
  np.savez(tmp_path / "other.npz", w=np.zeros(3))
  with pytest.raises(ValueError, match="does not hold the digit classifier"):
    dc.load_weights(str(tmp_path / "other.npz"))
