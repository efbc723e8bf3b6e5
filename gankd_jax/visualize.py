"""Sample grids: one row per example, one column per image kind (input | outputs... | target),
under a header strip that names each column (the labels of `Method.sample_columns`), so a grid
read on its own says which network painted what."""

from __future__ import annotations

import io

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] float images -> uint8; single-channel images become RGB."""
  images = np.asarray(images, np.float32)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _wrap(text: str, width: int, draw: ImageDraw.ImageDraw, font) -> list[str]:
  """Words of `text` in lines no wider than `width` px where possible (a long word stays whole)."""
  lines: list[str] = []
  for word in text.split():
    if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
      lines[-1] = f"{lines[-1]} {word}"
    else:
      lines.append(word)
  return lines


def header(labels: list[str], width: int, pad: int) -> np.ndarray:
  """A white uint8 strip with each label centred over its column (`width` px wide, `pad` apart),
  wrapped at spaces and clipped to its column."""
  font = ImageFont.load_default()
  draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  wrapped = [_wrap(label, width, draw, font) for label in labels]
  line_height = font.getbbox("Ag")[3] + 1
  strip = Image.new("RGB", (len(labels) * (width + pad) + pad,
                            max(map(len, wrapped), default=0) * line_height + pad), "white")
  for col, lines in enumerate(wrapped):
    cell = Image.new("RGB", (width, strip.height - pad), "white")
    cell_draw = ImageDraw.Draw(cell)
    for i, line in enumerate(lines):
      cell_draw.text(((width - cell_draw.textlength(line, font=font)) / 2, i * line_height), line,
                     fill="black", font=font)
    strip.paste(cell, (pad + col * (width + pad), pad))
  return np.asarray(strip, np.uint8)


def image_grid(columns: list[np.ndarray], pad: int = 2, labels: list[str] | None = None
               ) -> np.ndarray:
  """Tiles columns of equally shaped (N, H, W, C) batches into one uint8 (H', W', 3) image, under
  a header naming the columns when `labels` (one per column) are given."""
  columns = [to_uint8(c) for c in columns]
  n, h, w, _ = columns[0].shape
  grid = np.full((n * (h + pad) + pad, len(columns) * (w + pad) + pad, 3), 255, np.uint8)
  for col, images in enumerate(columns):
    for row in range(n):
      top, left = pad + row * (h + pad), pad + col * (w + pad)
      grid[top:top + h, left:left + w] = images[row]
  if labels is None:
    return grid
  if len(labels) != len(columns):
    raise ValueError(f"{len(labels)} labels for {len(columns)} sample-grid columns")
  return np.concatenate([header(labels, w, pad), grid])


def spread_indices(num_examples: int, num_rows: int) -> np.ndarray:
  """Up to `num_rows` example indices spread evenly over [0, num_examples), both ends included."""
  num_rows = min(num_rows, num_examples)
  if num_rows <= 0:
    return np.zeros((0,), np.int64)
  return np.unique(np.round(np.linspace(0, num_examples - 1, num_rows)).astype(np.int64))


class SampleRows:
  """The sample grid's rows, gathered batch by batch during one pass over an evaluation split.

  The rows are spread evenly over the split rather than taken from its first batch: a split is
  often ordered (the embedded one by source photo and crop scale), and the first batch would
  show one photo only.
  """

  def __init__(self, num_examples: int, num_rows: int):
    self._wanted = spread_indices(num_examples, num_rows)
    self._seen = 0
    self._parts: list[list[np.ndarray]] = []

  def add(self, batch_size: int, make_columns) -> None:
    """Next global batch of `batch_size` examples; `make_columns()` gives its grid columns."""
    hits = self._wanted[(self._wanted >= self._seen) & (self._wanted < self._seen + batch_size)]
    if hits.size:
      self._parts.append([np.asarray(c)[hits - self._seen] for c in make_columns()])
    self._seen += batch_size

  def columns(self) -> list[np.ndarray]:
    """One (rows, H, W, C) array per column, in example order."""
    return [np.concatenate(parts) for parts in zip(*self._parts)]


def save_png(image: np.ndarray, path: str | epath.Path) -> None:
  """Writes a temporary file and renames it (readers never see half a PNG); local or gs://."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)
