"""Deterministic, multi-process, prefetching input pipeline over a paired dataset.

Determinism contract (what makes resume and any process count give the same training data):
the global batch at step k depends only on (dataset, seed, global_batch_size, k).
- The example stream is the concatenation of epochs; epoch e visits the dataset in the order
  `np.random.default_rng((seed, e)).permutation(N)`; no example is dropped at epoch ends.
- Global position j of step k is stream element k * B + j.
- Its augmentation (crop offset, flip) draws from `np.random.default_rng((seed, k, j))`.
- Process p of P builds only positions [p * B / P, (p + 1) * B / P) of each global batch, so
  concatenating the local batches of all processes gives the same global batch for every P.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import numpy as np


def default_num_threads() -> int:
  return max(1, min(8, os.cpu_count() or 1))


def local_batch_size(global_batch_size: int, process_count: int, process_index: int) -> int:
  """Per-process share of the global batch; ValueError when it does not split evenly."""
  if global_batch_size <= 0:
    raise ValueError(f"global batch size must be positive, got {global_batch_size}")
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
  if global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"process count {process_count}")
  return global_batch_size // process_count


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """Visiting order of epoch `epoch`."""
  return np.random.default_rng((seed, epoch)).permutation(num_examples)


def augmentation_rng(seed: int, step: int, position: int) -> np.random.Generator:
  """Generator for the example at global position `position` of step `step`."""
  return np.random.default_rng((seed, step, position))


def stack_examples(examples) -> dict[str, np.ndarray]:
  """[(A, B), ...] -> {'A': (n, H, W, 3), 'B': (n, H, W, 3)} float32; a list of dicts (as
  unconditional datasets give) is stacked key by key, dtypes kept."""
  if isinstance(examples[0], dict):
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}
  a, b = zip(*examples)
  return {"A": np.stack(a).astype(np.float32, copy=False),
          "B": np.stack(b).astype(np.float32, copy=False)}


class _Failure:
  """Carries an exception from the producer thread to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


class GlobalBatchIterator:
  """Infinite iterator of this process's slice of each global training batch (numpy).

  Yields {'A': (B/P, H, W, 3), 'B': ...} float32 for steps start_step, start_step + 1, ...
  `step` is the step of the next batch `next()` returns. A background thread keeps
  `prefetch` batches ready (prefetch=0 builds batches in the caller's thread); decoding uses
  a pool of `num_threads` threads. Errors in the background re-raise in `next()`.
  Call `close()` (or use as a context manager) to stop the threads.
  """

  def __init__(self, dataset, global_batch_size: int, *, seed: int, start_step: int = 0,
               process_index: int = 0, process_count: int = 1, prefetch: int = 2,
               num_threads: Optional[int] = None):
    self.local_batch_size = local_batch_size(global_batch_size, process_count, process_index)
    if dataset.num_examples <= 0:
      raise ValueError("dataset has no examples")
    if seed < 0:
      raise ValueError(f"data seed must be >= 0, got {seed}")
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}")
    if prefetch < 0:
      raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    self.dataset = dataset
    self.global_batch_size = global_batch_size
    self.seed = int(seed)
    self.process_index = process_index
    self.process_count = process_count
    self.step = start_step
    self._permutations: dict[int, np.ndarray] = {}
    self._pool = ThreadPoolExecutor(num_threads or default_num_threads(),
                                    thread_name_prefix="gankd-data")
    self._closed = False
    self._failure: Optional[_Failure] = None
    self._stop = threading.Event()
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    self._thread = None
    if prefetch > 0:
      self._thread = threading.Thread(target=self._produce, args=(start_step,),
                                      name="gankd-prefetch", daemon=True)
      self._thread.start()

  # --- deterministic indexing -------------------------------------------------------------
  def _epoch_order(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      if len(self._permutations) >= 2:  # the stream only moves forward
        self._permutations.pop(min(self._permutations))
      self._permutations[epoch] = epoch_permutation(
          self.dataset.num_examples, self.seed, epoch)
    return self._permutations[epoch]

  def dataset_index(self, stream_position: int) -> int:
    """Dataset index of element `stream_position` of the concatenated epoch stream."""
    epoch, offset = divmod(stream_position, self.dataset.num_examples)
    return int(self._epoch_order(epoch)[offset])

  def local_positions(self) -> range:
    """Global batch positions this process builds."""
    start = self.process_index * self.local_batch_size
    return range(start, start + self.local_batch_size)

  def make_batch(self, step: int) -> dict[str, np.ndarray]:
    """Build this process's slice of global batch `step` (pure function of the contract)."""
    jobs = [(self.dataset_index(step * self.global_batch_size + j),
             augmentation_rng(self.seed, step, j)) for j in self.local_positions()]
    examples = self._pool.map(lambda job: self.dataset.example(*job), jobs)
    return stack_examples(list(examples))

  # --- background prefetching -------------------------------------------------------------
  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self, step: int) -> None:
    try:
      while not self._stop.is_set():
        if not self._put(self.make_batch(step)):
          return
        step += 1
    except BaseException as error:  # surfaced to the consumer in __next__
      self._put(_Failure(error))

  # --- iterator protocol ------------------------------------------------------------------
  def __iter__(self) -> "GlobalBatchIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._failure is not None:
      raise self._failure.error
    if self._closed:
      raise StopIteration
    if self._thread is None:
      batch = self.make_batch(self.step)
    else:
      item = self._queue.get()
      if isinstance(item, _Failure):
        self._failure = item
        raise item.error
      batch = item
    self.step += 1
    return batch

  def close(self) -> None:
    """Stop the prefetch thread and the decode pool; idempotent."""
    if self._closed:
      return
    self._closed = True
    self._stop.set()
    if self._thread is not None:
      while self._thread.is_alive():
        try:  # unblock a producer waiting on a full queue
          self._queue.get(timeout=0.05)
        except queue.Empty:
          pass
      self._thread.join()
    self._pool.shutdown(wait=True, cancel_futures=True)

  def __enter__(self) -> "GlobalBatchIterator":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def num_eval_steps(num_examples: int, global_batch_size: int) -> int:
  """Global batches needed to see every eval example once (the last one padded)."""
  return -(-num_examples // global_batch_size)


def eval_batches(dataset, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, *, max_examples: int = 0,
                 num_threads: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in dataset order, with the eval transform (no randomness).

  The last global batch is padded by repeating the last example; 'mask' (bool, (B/P,)) is
  True for real examples, so metrics can ignore padding. Process p gets positions
  [p * B / P, (p + 1) * B / P) of each global batch. `max_examples` > 0 keeps only the first ones.
  """
  per_process = local_batch_size(global_batch_size, process_count, process_index)
  count = dataset.num_examples
  if max_examples > 0:
    count = min(count, max_examples)
  with ThreadPoolExecutor(num_threads or default_num_threads()) as pool:
    for step in range(num_eval_steps(count, global_batch_size)):
      start = step * global_batch_size + process_index * per_process
      positions = np.arange(start, start + per_process)
      indices = np.minimum(positions, count - 1)
      examples = pool.map(lambda index: dataset.example(int(index), None), indices)
      batch = stack_examples(list(examples))
      batch["mask"] = positions < count
      yield batch
