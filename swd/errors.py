"""The project's one user-facing error type.

Raise `SwdError` for anything a user can get wrong (a bad preset name, a malformed file, a size
the model cannot take). The CLI prints its message on one line and exits non-zero; `assert` is
kept for internal invariants only.
"""


class SwdError(ValueError):
    """A user mistake, with a one-line message that names the field at fault."""
