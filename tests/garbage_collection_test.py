"""Full garbage collections are deferred while the stack is first imported,
and what the imports made is frozen (``switch_mtf.garbage_collection``)."""
import json
import textwrap

import helpers

# Counts full (generation 2) collections; a fresh interpreter each time.
_COUNTING = """
import gc, json, sys
full = []
gc.callbacks.append(lambda phase, info: phase == "stop"
                    and info["generation"] == 2 and full.append(1))
"""


def test_no_full_collection_while_importing_and_the_imports_are_frozen(
    tmp_path):
  # 400,000 live lists: plain Python makes full collections while they are
  # made (the control below), each scanning all of them.
  (tmp_path / "many_objects.py").write_text(
      "KEEP = [[i] for i in range(400000)]\n")
  code = _COUNTING + textwrap.dedent("""
      sys.path.insert(0, %r)
      from switch_mtf import garbage_collection
      if sys.argv[1] == "plain":
        import many_objects
        print(json.dumps({"full": len(full)}))
        sys.exit()
      thresholds = gc.get_threshold()
      with garbage_collection.long_lived_imports("many_objects"):
        import many_objects
      out = {"full": len(full), "frozen": gc.get_freeze_count(),
             "restored": gc.get_threshold() == thresholds}
      # Imported already: nothing changes (no freeze of what lives now).
      with garbage_collection.long_lived_imports("many_objects"):
        later = [[i] for i in range(1000)]
      out["frozen_again"] = gc.get_freeze_count() - out["frozen"]
      print(json.dumps(out))
  """ % str(tmp_path))
  plain = json.loads(helpers.fresh_python(code, "plain").stdout)
  assert plain["full"] >= 1
  out = json.loads(helpers.fresh_python(code, "deferred").stdout)
  assert out["full"] == 0
  assert out["frozen"] >= 400000
  assert out["restored"]
  assert out["frozen_again"] == 0


def test_the_command_line_imports_the_stack_without_full_collections(
    tmp_path):
  # `train` with a task that does not exist: the stack is imported, gin
  # parsed and the tasks registered, then one line and exit 2.
  code = _COUNTING + textwrap.dedent("""
      def count_while_importing(phase, info):
        if phase == "stop" and info["generation"] == 2 and not imported:
          during.append(1)
      during, imported = [], []
      gc.callbacks.append(count_while_importing)
      from switch_mtf import cli
      import_stack = cli._import_stack
      def import_stack_then_stop_counting():
        import_stack()
        imported.append(True)
      cli._import_stack = import_stack_then_stop_counting
      status = cli.main(["train", "--task", "no_such_task", "--model_dir",
                         %r, "--gin_file", "models/small/switch_8",
                         "--steps", "1"])
      print(json.dumps({"status": status, "during_imports": len(during),
                        "frozen": gc.get_freeze_count(),
                        "t5": "t5" in sys.modules, "imported": imported}))
  """ % str(tmp_path / "model"))
  result = helpers.fresh_python(code)
  assert "no_such_task" in result.stderr
  out = json.loads(result.stdout.splitlines()[-1])
  assert out["status"] == 2 and out["t5"] and out["imported"]
  # Without the deferral: 7 full collections by then (TensorFlow, Mesh TF,
  # seqio, t5 and their dependencies; 3 of them after TensorFlow's).
  assert out["during_imports"] == 0
  assert out["frozen"] > 250000


def test_nothing_is_frozen_where_tensorflow_was_imported_first(tmp_path):
  # As in a process that has built graphs before calling the command line
  # in-process: its garbage must stay collectable.
  code = textwrap.dedent("""
      import gc, json
      import tensorflow
      from switch_mtf import cli
      status = cli.main(["train", "--task", "no_such_task", "--model_dir",
                         %r, "--gin_file", "models/small/switch_8",
                         "--steps", "1"])
      print(json.dumps({"status": status, "frozen": gc.get_freeze_count()}))
  """ % str(tmp_path / "model"))
  out = json.loads(helpers.fresh_python(code).stdout.splitlines()[-1])
  assert out == {"status": 2, "frozen": 0}
