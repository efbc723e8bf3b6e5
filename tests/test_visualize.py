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
