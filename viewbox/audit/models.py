from django.db import models


class AuditEvent(models.Model):
    """One action on a patient's records: the actor, the record and the outcome.

    Entries hold internal ids only: never names, codes, passwords or text.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        FAILURE = "failure"

    at = models.DateTimeField(db_index=True)
    actor_kind = models.CharField(max_length=16)
    actor_id = models.CharField(max_length=64, blank=True)
    patient_id = models.BigIntegerField(null=True, blank=True)
    exam_id = models.BigIntegerField(null=True, blank=True)
    action = models.CharField(max_length=48)
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    client_address = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.action} {self.outcome}"
