"""Text files of one example per line, for ``predict`` and ``score``:
read as UTF-8 with one clear line for a missing, unreadable or empty file,
written whole or not at all."""
import os

from switch_mtf.errors import ConfigError


def read_lines(path, flag):
  """The lines of a UTF-8 text file; one line if missing, unreadable or
  empty."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise ConfigError("%s=%s does not exist" % (flag, path)) from None
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError("%s=%s cannot be read as UTF-8 text (%s)" % (
        flag, path, str(e).splitlines()[0][:100])) from None
  if not lines:
    raise ConfigError("%s=%s is empty: give one input per line" % (flag,
                                                                    path))
  return lines


def write_lines(path, lines):
  """Writes ``lines`` (text, one per line) to ``path`` whole or not at all."""
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise ConfigError("cannot write %s: %s is not a directory" % (
        path, directory))
  partial = path + ".partial"
  with open(partial, "w", encoding="utf-8") as f:
    f.writelines(line + "\n" for line in lines)
  os.replace(partial, path)
