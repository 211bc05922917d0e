from typing import Any, NoReturn

from django.db import models


class AuditLogImmutableError(Exception):
    """Raised on any attempt to change or delete a stored audit entry."""


def _reject_change() -> NoReturn:
    raise AuditLogImmutableError(
        "Audit entries cannot be changed or deleted. Record a new entry instead."
    )


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    """A queryset that can read and add entries but never change them.

    Bulk inserts are rejected too, because each entry must be chained to the
    one before it by ``viewbox.audit.actions.record_event``.
    """

    def update(self, **kwargs: Any) -> NoReturn:
        _reject_change()

    def delete(self) -> NoReturn:  # type: ignore[override]
        _reject_change()

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _reject_change()

    def bulk_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _reject_change()

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _reject_change()


class AuditEvent(models.Model):
    """One action on a patient's records: the actor, the record and the outcome.

    Entries hold internal ids only: never names, codes, passwords or text.
    Each entry is chained to the one before by ``entry_hash``, computed in
    ``viewbox.audit.chain``; ``sequence`` numbers the chain without gaps.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        FAILURE = "failure"

    sequence = models.BigIntegerField(unique=True)
    at = models.DateTimeField(db_index=True)
    actor_kind = models.CharField(max_length=16)
    actor_id = models.CharField(max_length=64, blank=True)
    patient_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    exam_id = models.BigIntegerField(null=True, blank=True)
    # The shared link an entry is about, when the actor is not the link
    # itself (for example the patient who created or revoked it).
    share_link_id = models.BigIntegerField(null=True, blank=True)
    action = models.CharField(max_length=48)
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    previous_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["sequence"]
        permissions = [("export_auditevent", "Can export audit events as CSV")]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.at:%Y-%m-%d %H:%M:%S} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            _reject_change()
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _reject_change()


class AuditChainHead(models.Model):
    """The single row that names the last entry of the audit chain.

    Appends lock this row, so that two workers never chain to the same
    entry, and verification compares it with the last entry, so that
    entries deleted from the end of the chain are noticed.
    """

    SINGLETON_ID = 1

    sequence = models.BigIntegerField(default=0)
    entry_hash = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"Audit chain head at #{self.sequence}"
