"""Sample grid rows: spread over the whole evaluation split, gathered across batches."""

import numpy as np
import pytest

from gankd_jax import visualize


@pytest.mark.parametrize("num_examples, num_rows, expected", [
    (10, 4, [0, 3, 6, 9]),
    (659, 8, [0, 94, 188, 282, 376, 470, 564, 658]),
    (3, 8, [0, 1, 2]),   # fewer examples than rows: every example once
    (1, 8, [0]),
    (0, 8, []),
])
def test_spread_indices(num_examples, num_rows, expected):
  assert visualize.spread_indices(num_examples, num_rows).tolist() == expected


def test_sample_rows_gathers_the_spread_examples_across_batches():
  num_examples, batch_size = 10, 4  # batches [0..3], [4..7], [8, 9, pad, pad]
  samples = visualize.SampleRows(num_examples, num_rows=4)  # wants 0, 3, 6, 9
  calls = []
  for start in range(0, num_examples, batch_size):
    index = np.arange(start, start + batch_size, dtype=np.float32)
    inputs = np.broadcast_to(index[:, None, None, None], (batch_size, 2, 2, 3))

    def make_columns(inputs=inputs):
      calls.append(start)
      return [inputs, -inputs]

    samples.add(batch_size, make_columns)
  first, second = samples.columns()
  assert first[:, 0, 0, 0].tolist() == [0, 3, 6, 9]
  np.testing.assert_array_equal(second, -first)
  assert calls == [0, 4, 8]


def test_sample_rows_skips_batches_without_wanted_examples():
  samples = visualize.SampleRows(num_examples=100, num_rows=2)  # wants 0 and 99
  for start in range(0, 100, 10):
    samples.add(10, (lambda: [np.zeros((10, 1, 1, 3))]) if start in (0, 90) else
                (lambda: pytest.fail("columns built for a batch without sample rows")))
  assert samples.columns()[0].shape == (2, 1, 1, 3)


def test_grid_header_names_each_column():
  columns = [np.full((2, 32, 32, 3), value, np.float32) for value in (-1.0, 0.0, 1.0)]
  plain = visualize.image_grid(columns)
  labels = ["input", "wide teacher", "target"]
  labelled = visualize.image_grid(columns, labels=labels)
  header = labelled.shape[0] - plain.shape[0]
  assert header > 0 and labelled.shape[1:] == plain.shape[1:]
  np.testing.assert_array_equal(labelled[header:], plain)  # The images themselves are unchanged.
  cells = [labelled[:header, 2 + c * 34:2 + c * 34 + 32] for c in range(3)]
  for cell in cells:
    assert (cell < 128).any()  # Ink in every column's cell.
  assert not np.array_equal(cells[0], cells[1]) and not np.array_equal(cells[1], cells[2])
  with pytest.raises(ValueError, match="2 labels for 3"):
    visualize.image_grid(columns, labels=labels[:2])


def test_methods_label_their_sample_columns():
  from conftest import tiny_aguinaldo_config, tiny_omgd_config
  from gankd_jax.methods import build_method
  image = np.zeros((1, 4, 4, 3))
  omgd = build_method(tiny_omgd_config())
  outputs = {role: image for role in omgd.generator_roles}
  assert list(omgd.sample_columns({"A": image, "B": image}, outputs)) == [
      "input", "wide teacher", "deep teacher", "student", "target"]
  aguinaldo = build_method(tiny_aguinaldo_config("scratch"))
  assert list(aguinaldo.sample_columns({"image": image}, {"student": image})) == ["real", "student"]
