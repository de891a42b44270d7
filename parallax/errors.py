"""User-facing errors: one line that names the problem and the fix; the CLI turns them into exit 2."""


class ParallaxError(Exception):
    """An error caused by the user's input (recipe, override, file, plugin), not by a bug.

    The message is a single line that names the problem (a key path, a file, a plugin) and,
    where there is one, the fix. The CLI prints it without a traceback and exits with 2.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class ConfigError(ParallaxError):
    """A recipe or override that does not validate; the message starts with the key path."""


class PluginError(ParallaxError):
    """A plugin that cannot be found, loaded, or that conflicts with another."""


class CheckpointError(ParallaxError):
    """A checkpoint that is missing, corrupt, or was written by plugins that are not installed."""


class TrainingError(ParallaxError):
    """Training cannot continue (for example a non-finite loss); the last checkpoint is kept."""


class Interrupted(TrainingError):
    """Ctrl-C or SIGTERM during a run; the run was saved. Exit 130, as for any interrupted command."""

    exit_code = 130
