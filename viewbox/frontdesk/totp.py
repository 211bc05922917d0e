"""Time-based one-time passwords (RFC 6238) for the staff log-in.

A code is the HOTP value (RFC 4226) of the number of 30-second steps since
the Unix epoch, truncated to 6 digits, computed with HMAC-SHA1 over a random
20-byte secret. Authenticator apps read the secret as base32 from an
``otpauth://`` URI, usually shown as a QR code.
"""

import base64
import hashlib
import hmac
import secrets
import struct
from urllib.parse import quote, urlencode

STEP_SECONDS = 30
DIGITS = 6
# Codes of the step before and the step after are accepted too, so that a
# phone clock that is off by up to 30 seconds still works.
TOLERANCE_STEPS = 1
SECRET_BYTES = 20


def generate_secret() -> str:
    """Return a new random secret in base32, without padding."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


def time_step(unix_seconds: float) -> int:
    return int(unix_seconds // STEP_SECONDS)


def code_at_step(secret: str, step: int, digits: int = DIGITS) -> str:
    """Return the code of one time step (RFC 4226 section 5.3 truncation)."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def matching_step(secret: str, typed: str, unix_seconds: float) -> int | None:
    """Return the time step whose code is ``typed``, within the tolerance.

    Spaces are ignored. Returns None when no step in the window matches.
    """
    digits = "".join(typed.split())
    if len(digits) != DIGITS or not (digits.isascii() and digits.isdigit()):
        return None
    now = time_step(unix_seconds)
    for step in range(now - TOLERANCE_STEPS, now + TOLERANCE_STEPS + 1):
        if hmac.compare_digest(code_at_step(secret, step), digits):
            return step
    return None


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """Return the ``otpauth://totp/`` URI that authenticator apps scan."""
    label = quote(f"{issuer}:{account}")
    query = urlencode(
        {
            "secret": secret,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": STEP_SECONDS,
        }
    )
    return f"otpauth://totp/{label}?{query}"
