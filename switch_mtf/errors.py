"""Errors a user can fix by changing a configuration value."""


class ConfigError(ValueError):
  """A bad configuration value: the message names the value and the fix.

  Entry points catch this, print the one-line message and exit non-zero,
  without a traceback.
  """
