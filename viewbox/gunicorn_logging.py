"""gunicorn's access log without the secrets that some URLs carry.

A password reset link contains a token that works for an hour, and a share
link a token that opens a patient's exams with the link's password. Written
to an access log, either would help anyone who reads the log.
"""

import posixpath
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from gunicorn.glogging import Logger

# /reset/<user id in base64>/<token>/ under a location's portal.
_RESET_TOKEN = re.compile(r"(/reset/)[^/\s]+/[^/\s]+/")
# /s/<token>/, a share link.
_SHARE_TOKEN = re.compile(r"((?:^|\s)/s/)[^/\s?]+")


def redact(text: str) -> str:
    text = _RESET_TOKEN.sub(r"\1[redacted]/", text)
    return _SHARE_TOKEN.sub(r"\1[redacted]", text)


def redact_target(target: str) -> str:
    """Return a request target with its secrets removed, however it is written.

    The target is decoded and normalised first, so that "/%73/<token>/",
    "/./s/<token>/" and "http://host/s/<token>/" lose the token as well. A
    target that held a secret is logged in that normalised form.
    """
    if target.startswith("/"):
        raw_path, _, query = target.partition("?")
    else:
        parts = urlsplit(target)
        raw_path, query = parts.path, parts.query
    path = posixpath.normpath("/" + unquote(raw_path).lstrip("/"))
    if raw_path.endswith("/") and not path.endswith("/"):
        path += "/"
    cleaned = redact(path)
    if cleaned == path:
        return target
    return cleaned + ("?" + query if query else "")


class RedactingLogger(Logger):
    """Access log lines with secrets in request paths replaced."""

    def atoms(
        self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any
    ) -> Any:
        atoms = super().atoms(resp, req, environ, request_time)
        request_line = atoms.get("r")
        if isinstance(request_line, str):
            method, _, rest = request_line.partition(" ")
            target, _, protocol = rest.rpartition(" ")
            if target:
                atoms["r"] = f"{method} {redact_target(target)} {protocol}"
            else:
                atoms["r"] = redact(request_line)
        if isinstance(atoms.get("U"), str):
            atoms["U"] = redact_target(atoms["U"])
        return atoms
