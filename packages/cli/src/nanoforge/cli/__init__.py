"""The umbrella ``nanoforge`` command and small helpers shared by every package's CLI.

What it does: discovers click groups registered under the ``nanoforge.cli`` entry-point group and mounts
them lazily; turns expected errors into one clear line and a non-zero exit; offers a rich progress bar.
What it does not do: define any sub-command itself, or import any other nanoforge package.
"""

from nanoforge.cli.errors import UserError
from nanoforge.cli.progress import progress

__all__ = ["UserError", "progress"]
