"""Hugging Face checkpoint directories: config.json and weights, read and
written one tensor at a time.

A directory holds ``config.json`` and its weights as one of
``model.safetensors``, ``model.safetensors.index.json`` (shards),
``pytorch_model.bin`` or ``pytorch_model.bin.index.json``.

Safetensors are read with our own few lines (a JSON header, then raw
little-endian arrays, mapped with ``np.memmap``) rather than the safetensors
package's NumPy loader: that loader refuses bfloat16, the dtype of the larger
released checkpoints, and its PyTorch loader would make torch a dependency.
PyTorch pickles need torch (the ``convert`` extra) and are mapped lazily too.
Writing uses the safetensors package, one shard in memory at a time.
"""
import contextlib
import json
import os
import shutil
import struct

import numpy as np

from switch_mtf.errors import ConfigError

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
BIN = "pytorch_model.bin"
_INDEX = ".index.json"


def _bfloat16():
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with TF)
  return ml_dtypes.bfloat16


_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": None}


def read_config(hf_dir):
  """config.json of ``hf_dir`` as a dict (one clear error if absent/bad)."""
  if not os.path.isdir(hf_dir):
    raise ConfigError("%s is not a directory: give the folder of a Hugging "
                      "Face checkpoint (config.json and its weights)" % hf_dir)
  path = os.path.join(hf_dir, CONFIG)
  if not os.path.isfile(path):
    raise ConfigError("%s has no config.json: it is not a Hugging Face "
                      "checkpoint directory" % hf_dir)
  try:
    with open(path) as f:
      config = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ConfigError("%s is not valid JSON (%s)" % (path, e)) from None
  if not isinstance(config, dict):
    raise ConfigError("%s is not a JSON object" % path)
  return config


class _SafetensorsFile(object):
  """Lazily mapped tensors of one .safetensors file."""

  def __init__(self, path):
    self.path = path
    try:
      size = os.path.getsize(path)
      with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        if header_size > size - 8:
          raise ValueError("header of %d bytes in a %d-byte file"
                           % (header_size, size))
        header = json.loads(f.read(header_size))
    except (OSError, ValueError, struct.error) as e:
      raise ConfigError("cannot read %s as safetensors (%s): the file is "
                        "corrupt or truncated" % (path, e)) from None
    header.pop("__metadata__", None)
    self._start = 8 + header_size
    self.entries = {}
    for name, entry in header.items():
      begin, end = entry["data_offsets"]
      if entry["dtype"] not in _DTYPES:
        raise ConfigError("%s: tensor %s has dtype %s; only float tensors "
                          "convert" % (path, name, entry["dtype"]))
      if self._start + end > size:
        raise ConfigError("%s is truncated: tensor %s ends at byte %d of %d"
                          % (path, name, self._start + end, size))
      self.entries[name] = (entry["dtype"], tuple(entry["shape"]), begin)

  def shape(self, name):
    return self.entries[name][1]

  def get(self, name):
    dtype, shape, begin = self.entries[name]
    dtype = _DTYPES[dtype] or _bfloat16()
    array = np.memmap(self.path, dtype=np.dtype(dtype).newbyteorder("<"),
                      mode="r", offset=self._start + begin,
                      shape=shape)
    return np.asarray(array, dtype=np.float32)


class _TorchFile(object):
  """Tensors of one PyTorch pickle, memory-mapped (needs torch)."""

  def __init__(self, path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ConfigError(
          "%s is a PyTorch pickle, which needs torch: pip install "
          "'switch_mtf[convert]', or give the safetensors version of the "
          "checkpoint" % path) from None
    try:
      self._tensors = torch.load(path, map_location="cpu", mmap=True,
                                 weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError("cannot read %s (%s): the file is corrupt or not a "
                        "PyTorch state dict" % (path, str(e).splitlines()[0]
                                                if str(e) else type(e).__name__)
                        ) from None
    self.entries = {name: None for name in self._tensors}

  def shape(self, name):
    return tuple(self._tensors[name].shape)

  def get(self, name):
    return self._tensors[name].float().numpy().astype(np.float32)


class _Alias(object):

  def __init__(self, opened, name):
    self._opened, self._name = opened, name

  def shape(self, name):
    del name
    return self._opened.shape(self._name)

  def get(self, name):
    del name
    return self._opened.get(self._name)


class WeightReader(object):
  """The tensors of a Hugging Face directory by name, read one at a time.

  All shard files are opened (headers only) up front, so a missing or
  corrupt shard is an error before anything is written.
  """

  def __init__(self, hf_dir):
    self._files = {}
    self._where = {}
    for base, opener in ((SAFETENSORS, _SafetensorsFile), (BIN, _TorchFile)):
      index = os.path.join(hf_dir, base + _INDEX)
      if os.path.isfile(index):
        self._open_index(hf_dir, index, opener)
        return
      if os.path.isfile(os.path.join(hf_dir, base)):
        self._open(hf_dir, base, opener)
        return
    raise ConfigError(
        "%s has no weights: expected %s, %s, %s or %s beside config.json"
        % (hf_dir, SAFETENSORS, SAFETENSORS + _INDEX, BIN, BIN + _INDEX))

  def _open(self, hf_dir, filename, opener):
    path = os.path.join(hf_dir, filename)
    if not os.path.isfile(path):
      raise ConfigError("shard %s is missing from %s (listed in its index): "
                        "download every shard" % (filename, hf_dir))
    opened = self._files[filename] = opener(path)
    for name in opened.entries:
      self._where[name] = opened
    return opened

  def _open_index(self, hf_dir, index, opener):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError("%s is not a valid shard index (%s)" % (index, e)
                        ) from None
    for filename in sorted(set(weight_map.values())):
      self._open(hf_dir, filename, opener)
    for name, filename in weight_map.items():
      if name not in self._files[filename].entries:
        raise ConfigError("%s lists %s in %s, which does not hold it: the "
                          "shard does not belong to this index"
                          % (index, name, filename))

  def names(self):
    return set(self._where)

  def alias(self, name, existing):
    """Makes ``name`` read ``existing`` (tied tensors saved once)."""
    self._where[name] = _Alias(self._where[existing], existing)

  def shape(self, name):
    return self._where[name].shape(name)

  def get(self, name):
    return self._where[name].get(name)


def shard_plan(tensors, max_shard_bytes):
  """Splits [(name, shape)] (float32) into consecutive shards of at most
  ``max_shard_bytes`` (a tensor larger than that is a shard of its own)."""
  shards, current, size = [], [], 0
  for name, shape in tensors:
    nbytes = 4 * int(np.prod(shape))
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append((name, shape))
    size += nbytes
  if current:
    shards.append(current)
  return shards


def write_safetensors(out_dir, tensors, produce, max_shard_bytes):
  """Writes float32 tensors [(name, shape)] as model.safetensors, or as
  shards with model.safetensors.index.json, asking ``produce(name)`` for
  each one; at most one shard is in memory.  Returns the files written."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  shards = shard_plan(tensors, max_shard_bytes)
  names = ([SAFETENSORS] if len(shards) == 1 else
           ["model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
            for i in range(len(shards))])
  weight_map, total = {}, 0
  for filename, shard in zip(names, shards):
    arrays = {}
    for name, shape in shard:
      array = np.ascontiguousarray(produce(name), dtype=np.float32)
      if tuple(array.shape) != tuple(shape):
        raise ValueError("%s: produced %s, planned %s" % (name, array.shape,
                                                         shape))
      arrays[name] = array
      weight_map[name] = filename
      total += array.nbytes
    safetensors_numpy.save_file(arrays, os.path.join(out_dir, filename),
                                metadata={"format": "pt"})
  if len(shards) > 1:
    with open(os.path.join(out_dir, SAFETENSORS + _INDEX), "w") as f:
      json.dump({"metadata": {"total_size": total},
                 "weight_map": weight_map}, f, indent=1, sort_keys=True)
    names.append(SAFETENSORS + _INDEX)
  return names


@contextlib.contextmanager
def staged_directory(path, flag):
  """Yields a scratch directory that becomes ``path`` only when the block
  succeeds; on any error it is removed, so no partial output is left that
  looks complete.  ``path`` must not exist, or be an empty directory."""
  path = os.path.abspath(path)
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise ConfigError("%s=%s already exists and is not empty: give a new "
                      "directory" % (flag, path))
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  scratch = path + ".partial-%d" % os.getpid()
  shutil.rmtree(scratch, ignore_errors=True)
  os.makedirs(scratch)
  try:
    yield scratch
    if os.path.isdir(path):
      os.rmdir(path)
    os.rename(scratch, path)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
