"""I-Codes: random, easy to read aloud, stored only as a keyed hash.

A code is 16 symbols from a 30-symbol alphabet without look-alikes (no 0, O,
1, I, L, U), shown in four groups of four: ``7KQ4-M2XD-9RTB-HW3F``. That is
16 * log2(30), about 78 random bits from the operating system's CSPRNG.
People may type it in any case, with or without dashes and spaces.
"""

import hashlib
import hmac
import secrets

from django.conf import settings

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 16
GROUP_SIZE = 4
_SEPARATORS = str.maketrans("", "", " -_.\t")


def generate_code() -> str:
    """Return a new code in its printed form."""
    symbols = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    return format_code(symbols)


def format_code(symbols: str) -> str:
    groups = [symbols[i : i + GROUP_SIZE] for i in range(0, len(symbols), GROUP_SIZE)]
    return "-".join(groups)


def normalize_code(typed: str) -> str | None:
    """Return the bare symbols of a typed code, or None if it cannot be one."""
    symbols = typed.translate(_SEPARATORS).upper()
    if len(symbols) != LENGTH or any(symbol not in ALPHABET for symbol in symbols):
        return None
    return symbols


def hash_code(symbols: str) -> str:
    """Return the keyed hash stored in place of the code.

    The key lives outside the database, so a copy of the database alone does
    not allow checking guesses offline.
    """
    key = settings.ICODE_HASH_KEY.encode()
    return hmac.new(key, symbols.encode(), hashlib.sha256).hexdigest()
