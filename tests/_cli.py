"""Running a command's `main(argv)` in process with its output captured, and reading its JSON line."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout


def run_cli(main, argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `main(argv)`."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def last_json(out: str) -> dict:
    """The JSON object on the last line of a command's output (where the CLIs put their result)."""
    return json.loads(out.strip().splitlines()[-1])
