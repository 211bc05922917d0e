"""gunicorn's access log without the secrets that some URLs carry.

A password reset link contains a token that works for an hour, and a share
link a token that opens a patient's exams with the link's password. Written
to an access log, either would help anyone who reads the log.
"""

import re
from typing import Any

from gunicorn.glogging import Logger

# /reset/<user id in base64>/<token>/ under a location's portal.
_RESET_TOKEN = re.compile(r"(/reset/)[^/\s]+/[^/\s]+/")
# /s/<token>/, a share link.
_SHARE_TOKEN = re.compile(r"((?:^|\s)/s/)[^/\s?]+")


def redact(text: str) -> str:
    text = _RESET_TOKEN.sub(r"\1[redacted]/", text)
    return _SHARE_TOKEN.sub(r"\1[redacted]", text)


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
