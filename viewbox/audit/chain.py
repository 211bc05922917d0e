"""The hash chain that makes changes to the audit log detectable.

Every entry stores ``entry_hash = HMAC-SHA256(key, canonical(entry))``, where
the canonical form includes the previous entry's hash. Changing, inserting or
removing an entry therefore breaks the hash of that entry or of the next.

The hash is keyed with ``settings.AUDIT_CHAIN_KEY``, which lives outside the
database (the environment or a file in the data directory). Someone who can
write to the database but does not hold the key cannot compute hashes for
altered entries. A plain SHA-256 chain would not stop them, because they
could recompute every hash after the entry they changed.

The canonical form is compact JSON with sorted keys, for example::

    {"action":"report.view","actor_id":"7","actor_kind":"account",
     "at":"2026-12-04T18:00:00.000000+00:00","client_address":"7f000001",
     "exam_id":12,"outcome":"success","patient_id":3,
     "previous_hash":"00...00","sequence":41,"share_link_id":null}

Times are UTC with microseconds, and client addresses are the hex of the
packed address, so that the way a database prints an address cannot change
the hash.
"""

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC

from django.conf import settings

from viewbox.audit.models import AuditChainHead, AuditEvent

GENESIS_HASH = "0" * 64
CHAINED_FIELDS = (
    "sequence",
    "at",
    "actor_kind",
    "actor_id",
    "patient_id",
    "exam_id",
    "share_link_id",
    "action",
    "outcome",
    "client_address",
    "previous_hash",
)


def canonical_bytes(event: AuditEvent) -> bytes:
    """Serialise the chained fields of an entry in one fixed way."""
    values: dict[str, object] = {name: getattr(event, name) for name in CHAINED_FIELDS}
    values["at"] = event.at.astimezone(UTC).isoformat(timespec="microseconds")
    if event.client_address:
        values["client_address"] = ipaddress.ip_address(
            event.client_address
        ).packed.hex()
    return json.dumps(values, sort_keys=True, separators=(",", ":")).encode()


def compute_hash(event: AuditEvent) -> str:
    key = settings.AUDIT_CHAIN_KEY.encode()
    return hmac.new(key, canonical_bytes(event), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    """The first place where the stored chain does not verify."""

    sequence: int | None
    event_id: int | None
    reason: str


def iterate_chain(batch_size: int = 2000) -> Iterator[AuditEvent]:
    """Yield every entry in chain order, reading a batch at a time."""
    last_sequence = -1
    while True:
        batch = list(
            AuditEvent.objects.filter(sequence__gt=last_sequence).order_by("sequence")[
                :batch_size
            ]
        )
        if not batch:
            return
        yield from batch
        last_sequence = batch[-1].sequence


def find_first_problem() -> tuple[int, ChainProblem | None]:
    """Verify the whole chain; return the entries checked and the first problem.

    An entry fails when its sequence number skips, because an entry was
    removed. It fails when its previous_hash differs from the hash of the
    entry before it, because an entry was removed or reordered. It fails when
    its own hash does not match its fields, because it was edited or written
    without the key. The head row must name the last entry, or entries were
    removed from the end.
    """
    expected_sequence = 1
    previous_hash = GENESIS_HASH
    checked = 0
    for event in iterate_chain():
        problem = _check_entry(event, expected_sequence, previous_hash)
        if problem is not None:
            return checked, problem
        checked += 1
        expected_sequence = event.sequence + 1
        previous_hash = event.entry_hash

    head = AuditChainHead.objects.filter(pk=AuditChainHead.SINGLETON_ID).first()
    head_sequence = head.sequence if head else 0
    head_hash = head.entry_hash if head else ""
    if head_sequence != checked or (checked and head_hash != previous_hash):
        return checked, ChainProblem(
            sequence=head_sequence,
            event_id=None,
            reason=(
                f"the chain head names entry #{head_sequence} but the last "
                f"stored entry is #{checked}"
            ),
        )
    return checked, None


def _check_entry(
    event: AuditEvent, expected_sequence: int, previous_hash: str
) -> ChainProblem | None:
    if event.sequence != expected_sequence:
        reason = f"expected entry #{expected_sequence} here, found #{event.sequence}"
    elif not hmac.compare_digest(event.previous_hash, previous_hash):
        reason = "its previous_hash does not match the entry before it"
    elif not hmac.compare_digest(event.entry_hash, compute_hash(event)):
        reason = "its entry_hash does not match its fields"
    else:
        return None
    return ChainProblem(sequence=event.sequence, event_id=event.pk, reason=reason)
