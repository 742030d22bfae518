"""tasks/local.py: the user's own files as seqio tasks; bad records are
counted and skipped, missing or empty files are one clear error."""
import gzip
import json

import pytest
import seqio
import tensorflow_datasets as tfds

from switch_mtf.errors import ConfigError
from switch_mtf.tasks import local

VOCAB = seqio.ByteVocabulary(extra_ids=100)
GOOD = ["The city of Kistaezi lies on the Fekiol river.",
        "Gazios Gidaen was a merchant born in 1432."]


def _texts(task, split, key):
  dataset = task.get_dataset(None, split=split, shuffle=False,
                             try_in_mem_cache=False)
  return [VOCAB.decode(list(ex[key])) for ex in tfds.as_numpy(dataset)]


def test_json_lines_pretraining_skips_and_counts_bad_records(tmp_path):
  path = tmp_path / "c4-train.json.gz"
  with gzip.open(path, "wb") as f:
    f.write((json.dumps({"text": GOOD[0], "url": "x"}) + "\n").encode())
    f.write(b'{"url": "no text"}\n')                 # no "text"
    f.write(b"\xff\xfe not utf-8\n")                 # not UTF-8
    f.write(b"{not json\n")                          # not JSON
    f.write((json.dumps({"text": GOOD[1]}) + "\n").encode())
  counters = local.register(VOCAB, pretraining={"train": str(path)})
  task = seqio.get_mixture_or_task(local.PRETRAINING)
  records = list(tfds.as_numpy(task.source.get_dataset("train")))
  assert [r["text"].decode() for r in records] == GOOD
  assert counters[local.PRETRAINING].count == 3
  # The whole chain (span corruption) runs on it.
  example = next(iter(tfds.as_numpy(task.get_dataset(
      {"inputs": 32, "targets": 8}, split="train", shuffle=False,
      try_in_mem_cache=False))))
  assert len(example["inputs"]) == 32


def test_plain_text_and_tsv_files(tmp_path):
  (tmp_path / "docs.txt").write_text(GOOD[0] + "\n\n" + GOOD[1] + "\n")
  (tmp_path / "train.tsv").write_text(
      "question: where?\tKistaezi\nbroken line without a tab\n"
      "question: when?\t1432\n")
  counters = local.register(
      VOCAB, pretraining={"train": str(tmp_path / "*.txt")},
      text_to_text_files={"train": str(tmp_path / "train.tsv")})
  pretraining = seqio.get_mixture_or_task(local.PRETRAINING)
  assert [r["text"].decode() for r in tfds.as_numpy(
      pretraining.source.get_dataset("train"))] == GOOD
  task = seqio.get_mixture_or_task(local.TEXT_TO_TEXT)
  assert _texts(task, "train", "targets") == ["Kistaezi", "1432"]
  assert counters[local.TEXT_TO_TEXT].count == 1
  assert task.metric_fns[0](["a", "b"], ["a", "c"]) == {"accuracy": 50.0}


def test_missing_or_empty_files_are_one_clear_error(tmp_path):
  with pytest.raises(ConfigError, match="no file matches"):
    local.register(VOCAB, pretraining={"train": str(tmp_path / "*.json")})
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ConfigError, match="empty"):
    local.register(VOCAB, pretraining={"train": str(tmp_path / "empty.txt")})
