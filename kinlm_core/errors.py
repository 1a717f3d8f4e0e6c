"""The errors kinlm raises for a user to read, each with a message of one line per problem.

A plugin raises these (``from kinlm_core import SpecError``) where its own input is wrong, and the CLI
turns each into its one-line message and exit code 2. Importing this module imports nothing else.
"""


class SpecError(Exception):
    """Bad input. ``problems`` holds one line per problem, each naming the file and JSON path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class RunError(Exception):
    """A run cannot start or go on (message is one line for the user)."""


class RunStopped(RunError):
    """The run stopped itself before train.max_steps (a full disk, a non-finite loss): one line, exit 3;
    its result.json says why and its last checkpoint is kept."""


class CheckpointError(Exception):
    """A checkpoint is missing, incomplete or corrupt (the message names the file)."""


class RegistryError(Exception):
    """A problem with the installed plugins (e.g. two distributions claim one component name)."""


class DataError(ValueError):
    """A data source's file is missing, empty or not what its format needs. ``path`` is the JSON path
    of the spec field that names the file (e.g. ``data.train[0]``); the CLI puts the spec file (or the
    ``--set`` that set the field) in front of the message."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}")
