import logging

from django.utils import timezone

from viewbox.audit.models import AuditEvent

logger = logging.getLogger(__name__)


def record_event(
    action: str,
    *,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    actor_kind: str = "system",
    actor_id: str | int = "",
    patient_id: int | None = None,
    exam_id: int | None = None,
    client_address: str | None = None,
) -> AuditEvent:
    """Store one audit entry. Callers pass internal ids, never names or codes."""
    return AuditEvent.objects.create(
        at=timezone.now(),
        action=action,
        outcome=outcome,
        actor_kind=actor_kind,
        actor_id=str(actor_id),
        patient_id=patient_id,
        exam_id=exam_id,
        client_address=client_address,
    )
