"""Argument types shared by the ingest commands."""

import argparse

_PORT_MAX = 65535


def listen_port(text: str) -> int:
    """Return the TCP port in text, 0 to 65535, where 0 binds any free port.

    argparse prints the ArgumentTypeError's message as one line, where
    socket.bind() would raise an OverflowError with a traceback.
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: not a whole number; use 0 to {_PORT_MAX}"
        ) from None
    if not 0 <= port <= _PORT_MAX:
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: out of range; use 0 to {_PORT_MAX}"
        )
    return port
