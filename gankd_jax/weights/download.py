"""Canonical pretrained files: where they come from, where they are cached, how they are checked.

`resolve(KNOWN_FILE, explicit_path, flag=...)` returns a local path: the explicit path if given
(it must exist), else the file in a cache directory (ours: `$GANKD_CACHE` or `~/.cache/gankd_jax`,
then torch hub's `~/.cache/torch/hub/checkpoints`), else a download into our cache. Downloads are
verified as torch.hub verifies these files: the hex digits after the last '-' of the canonical
file name are the prefix of the file's SHA-256. Offline (or with `GANKD_OFFLINE=1`), the error is one
line naming the file, its URL and the flag or path that takes it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import urllib.error
import urllib.request

OFFLINE_ENV = "GANKD_OFFLINE"
CACHE_ENV = "GANKD_CACHE"
DOWNLOAD_TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True)
class KnownFile:
  description: str
  filename: str
  url: str
  sha256_prefix: str


INCEPTION_FID = KnownFile(
    "pytorch-fid InceptionV3 weights", "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth", "6726825d")
VGG16 = KnownFile(
    "torchvision VGG16 weights", "vgg16-397923af.pth",
    "https://download.pytorch.org/models/vgg16-397923af.pth", "397923af")


def cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.expanduser("~/.cache/gankd_jax")


def search_dirs() -> list[str]:
  return [cache_dir(), os.path.expanduser("~/.cache/torch/hub/checkpoints")]


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for chunk in iter(lambda: handle.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def find_cached(known: KnownFile) -> str | None:
  for directory in search_dirs():
    candidate = os.path.join(directory, known.filename)
    if os.path.isfile(candidate):
      return candidate
  return None


def download(known: KnownFile, url: str | None = None) -> str:
  """Fetches `known` into the cache (verified); returns its path. Raises OSError/ValueError."""
  url = url or known.url
  os.makedirs(cache_dir(), exist_ok=True)
  target = os.path.join(cache_dir(), known.filename)
  tmp = f"{target}.{os.getpid()}.partial"
  try:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
      shutil.copyfileobj(response, out, 1 << 20)
    digest = sha256_of(tmp)
    if not digest.startswith(known.sha256_prefix):
      raise ValueError(f"downloaded {known.filename} from {url} has SHA-256 {digest[:16]}..., "
                       f"expected a digest starting with {known.sha256_prefix}; not kept")
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target


def resolve(known: KnownFile, explicit_path: str | None = None, *, flag: str,
            allow_download: bool = True, url: str | None = None) -> str:
  """A local path of `known`; ValueError (one line, what to get and where to put it) if none."""
  if explicit_path:
    if not os.path.isfile(explicit_path):
      raise ValueError(f"{flag}: no such file: {explicit_path}")
    return explicit_path
  cached = find_cached(known)
  if cached:
    return cached
  reason = f"{OFFLINE_ENV} is set"
  if allow_download and not os.environ.get(OFFLINE_ENV):
    try:
      return download(known, url)
    except (OSError, urllib.error.URLError) as error:
      reason = f"download from {url or known.url} failed: {getattr(error, 'reason', error)}"
  raise ValueError(
      f"{known.description} {known.filename} not found ({reason}); download {known.url} "
      f"and pass {flag}=FILE, or put it in {cache_dir()}/")
