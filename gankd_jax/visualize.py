"""Sample grids: one row per example, one column per image kind (input | outputs... | target)."""

from __future__ import annotations

import io

import numpy as np
from etils import epath
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] float images -> uint8; single-channel images become RGB."""
  images = np.asarray(images, np.float32)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(columns: list[np.ndarray], pad: int = 2) -> np.ndarray:
  """Tiles columns of equally shaped (N, H, W, C) batches into one uint8 (H', W', 3) image."""
  columns = [to_uint8(c) for c in columns]
  n, h, w, _ = columns[0].shape
  grid = np.full((n * (h + pad) + pad, len(columns) * (w + pad) + pad, 3), 255, np.uint8)
  for col, images in enumerate(columns):
    for row in range(n):
      top, left = pad + row * (h + pad), pad + col * (w + pad)
      grid[top:top + h, left:left + w] = images[row]
  return grid


def save_png(image: np.ndarray, path: str | epath.Path) -> None:
  """Writes a temporary file and renames it (readers never see half a PNG); local or gs://."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)
