"""What byol raises for what it is given: a setting (:class:`~byol.config_files.ConfigError`), data
(:class:`~byol.data.DataError`), a checkpoint (:class:`~byol.checkpoint.CheckpointError`) or an output
(:class:`~byol.outputs.OutputError`), each with one sentence saying what is wrong and what to do.

They share :class:`ByolError`, so that a loop over runs or checkpoints can tell bad input from a bug
with one ``except byol.ByolError`` (the command line prints the sentence and exits with 2). Misuse of
a building block (a wrong type, a value out of range) is Python's own ``TypeError`` or ``ValueError``.
"""


class ByolError(Exception):
    """Bad input to byol's commands and their functions; its message says what is wrong and how to fix it."""
