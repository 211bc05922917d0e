import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from viewbox.audit import chain
from viewbox.audit.models import AuditChainHead, AuditEvent

logger = logging.getLogger(__name__)


def record_event(
    action: str,
    *,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    actor_kind: str = "system",
    actor_id: str | int = "",
    patient_id: int | None = None,
    exam_id: int | None = None,
    share_link_id: int | None = None,
    client_address: str | None = None,
) -> AuditEvent:
    """Append one entry to the audit chain.

    Callers pass internal ids, never names, codes, passwords or report text.
    ``share_link_id`` names the shared link an action was about when the
    actor is someone else (``actor_kind="share"`` already names the link).
    The entry commits or rolls back with the caller's transaction.
    """
    # Without a savepoint of its own: an error rolls back the caller's
    # transaction, which is what callers want, and each append costs two
    # statements fewer.
    with transaction.atomic(savepoint=False):
        # The row lock makes appends from every worker on every machine take
        # turns, so that no two entries chain to the same predecessor. It is
        # held until the caller's transaction ends. SQLite has no row locks,
        # but its IMMEDIATE transactions (see settings) take the write lock
        # before the head is read, which serialises appends the same way.
        # NOTE: a long transaction that records an event early delays every
        # other append until it ends, so record events late in such work.
        head = _lock_head()
        event = AuditEvent(
            sequence=head.sequence + 1,
            at=timezone.now(),
            action=action,
            outcome=outcome,
            actor_kind=actor_kind,
            actor_id=str(actor_id),
            patient_id=patient_id,
            exam_id=exam_id,
            share_link_id=share_link_id,
            client_address=client_address or None,
            previous_hash=head.entry_hash or chain.GENESIS_HASH,
        )
        event.entry_hash = chain.compute_hash(event)
        event.save(force_insert=True)
        head.sequence = event.sequence
        head.entry_hash = event.entry_hash
        head.save(update_fields=["sequence", "entry_hash"])
    return event


def _lock_head() -> AuditChainHead:
    locked = AuditChainHead.objects.select_for_update()
    head = locked.filter(pk=AuditChainHead.SINGLETON_ID).first()
    if head is not None:
        return head
    # The migration creates the head, but a database flush (as in tests)
    # removes it. The first append after that creates it again from the last
    # stored entry. When two workers race to do so, the loser reads the
    # winner's row.
    last = AuditEvent.objects.order_by("-sequence").first()
    try:
        with transaction.atomic():
            AuditChainHead.objects.create(
                pk=AuditChainHead.SINGLETON_ID,
                sequence=last.sequence if last else 0,
                entry_hash=last.entry_hash if last else "",
            )
    except IntegrityError:
        logger.info("Audit chain head was created by another worker")
    return locked.get(pk=AuditChainHead.SINGLETON_ID)
