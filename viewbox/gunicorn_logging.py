"""gunicorn's access log without the secrets that some URLs carry.

A password reset link contains a token that works for an hour. Written to
an access log, it would let anyone who reads the log set the password.
"""

import re
from typing import Any

from gunicorn.glogging import Logger

# /reset/<user id in base64>/<token>/ under a location's portal.
_RESET_TOKEN = re.compile(r"(/reset/)[^/\s]+/[^/\s]+/")


def redact(text: str) -> str:
    return _RESET_TOKEN.sub(r"\1[redacted]/", text)


class RedactingLogger(Logger):
    """Access log lines with secrets in request paths replaced."""

    def atoms(
        self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any
    ) -> Any:
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U"):
            if isinstance(atoms.get(key), str):
                atoms[key] = redact(atoms[key])
        return atoms
