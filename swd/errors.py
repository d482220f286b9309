"""The project's one user-facing error type.

Raise `SwdError` for anything a user can get wrong (a bad preset name, a malformed file, a size
the model cannot take). The CLI prints its message on one line and exits non-zero; `assert` is
kept for internal invariants only. `expected_failure` gives the one line for the other failures a
user can cause (I/O, corrupt files, too little memory); the CLI and the app print it.
"""

from __future__ import annotations

import json
import sys


class SwdError(ValueError):
    """A user mistake, with a one-line message that names the field at fault."""


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "not enough memory" in text
                                              or "can't allocate memory" in text)


def expected_failure(err: BaseException) -> str | None:
    """One line for a failure a user can cause (I/O, a corrupt or undecodable file, too little
    memory); None for anything else, which is a bug and keeps its traceback."""
    if is_out_of_memory(err):
        detail = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        return f"out of memory ({detail}); ask for fewer images or a smaller batch"
    if isinstance(err, OSError):
        text = str(err).strip()
        reason = err.strerror or (text.splitlines()[0] if text else type(err).__name__)
        return f"{err.filename}: {reason}" if err.filename is not None else reason
    if isinstance(err, UnicodeDecodeError):
        return f"an input file is not UTF-8 text ({err.reason} at byte {err.start})"
    if isinstance(err, json.JSONDecodeError):
        return f"an input file is not valid JSON ({err.msg} at line {err.lineno})"
    safetensors_error = getattr(sys.modules.get("safetensors"), "SafetensorError", None)
    if safetensors_error is not None and isinstance(err, safetensors_error):
        return f"a .safetensors file is corrupt or truncated ({err})"
    yaml_error = getattr(sys.modules.get("yaml"), "YAMLError", None)
    if yaml_error is not None and isinstance(err, yaml_error):
        return f"an input file is not valid YAML ({str(err).splitlines()[0] if str(err) else 'parse error'})"
    return None
