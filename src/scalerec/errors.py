"""The exception types for user mistakes: the CLI prints their message and exits non-zero, no traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a value, an option); the message says what and what was expected.
    The CLI exits with status 1."""


class OptionError(UserError):
    """A bad option value (on the command line or in a config or grid file): exit status 2, as argparse's own."""


class Diverged(UserError):
    """A run, or a stage of one (--pretrain's), whose loss became nan or inf, refused or stopped: exit status 3,
    as a diverged run's."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, as a scheduler or container stops a job (Slurm, Docker, Kubernetes): handled as Ctrl-C is (the
    epochs so far kept, summary.json saying so), with exit status 143."""
