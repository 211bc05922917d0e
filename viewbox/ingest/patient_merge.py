"""Merge two patient records of one imaging group into one (HL7 ADT^A40).

Everything that points to the prior patient moves to the surviving one: its
visits with their exams, reports and I-Codes, and its portal account. A
visit at the same location on the same date of service as one of the
surviving patient's visits is folded into that visit. The prior patient row
is then deleted, because nothing refers to it any more and a second record
for the same person would confuse account sign-up.
"""

import logging
from dataclasses import dataclass, field

from django.db import models

from viewbox.audit.actions import record_event
from viewbox.records.models import Patient, Visit

logger = logging.getLogger(__name__)


class MergeConflict(ValueError):
    """Two records that cannot both move to the surviving patient."""


@dataclass
class MergeResult:
    """Internal ids of what moved, for the log and the audit trail."""

    moved_visit_ids: list[int] = field(default_factory=list)
    folded_visit_ids: list[int] = field(default_factory=list)
    exam_ids: list[int] = field(default_factory=list)


def merge_patients(
    prior: Patient, surviving: Patient, *, actor_kind: str, actor_id: int | str
) -> MergeResult:
    """Move everything of ``prior`` to ``surviving``, then delete ``prior``.

    Call inside a transaction. Raises MergeConflict, before changing
    anything, when both patients have a record that only one patient may
    have, like a portal account.
    """
    if prior.pk == surviving.pk or prior.group_id != surviving.group_id:
        raise MergeConflict("the two patients must differ and share an imaging group")
    _check_conflicts(prior, surviving)

    result = MergeResult()
    for visit in Visit.objects.select_for_update().filter(patient=prior):
        result.exam_ids += list(visit.exams.values_list("pk", flat=True))
        existing = Visit.objects.filter(
            patient=surviving,
            location_id=visit.location_id,
            date_of_service=visit.date_of_service,
        ).first()
        if existing is None:
            visit.patient = surviving
            visit.save(update_fields=["patient"])
            result.moved_visit_ids.append(visit.pk)
        else:
            _move_related(visit, existing)
            result.folded_visit_ids.append(visit.pk)
            visit.delete()
    _move_related(prior, surviving, skip=Visit)

    record_event(
        "patient.merge_prior",
        actor_kind=actor_kind,
        actor_id=actor_id,
        patient_id=prior.pk,
    )
    record_event(
        "patient.merge",
        actor_kind=actor_kind,
        actor_id=actor_id,
        patient_id=surviving.pk,
    )
    for exam_id in result.exam_ids:
        record_event(
            "patient.merge_exam",
            actor_kind=actor_kind,
            actor_id=actor_id,
            patient_id=surviving.pk,
            exam_id=exam_id,
        )
    logger.info(
        "Merged patient %d into patient %d: visits moved %s, folded %s, exams %s",
        prior.pk,
        surviving.pk,
        result.moved_visit_ids,
        result.folded_visit_ids,
        result.exam_ids,
    )
    prior.delete()
    return result


def _check_conflicts(prior: Patient, surviving: Patient) -> None:
    """Raise MergeConflict for links that cannot move without losing one.

    A one-to-one record (a portal account) that both patients have cannot
    move, and links from a many-to-many field are not moved by this module.
    """
    for relation in Patient._meta.related_objects:
        model = relation.related_model
        name = relation.field.name
        label = model._meta.verbose_name
        if (
            relation.many_to_many
            and model._default_manager.filter(**{name: prior}).exists()
        ):
            raise MergeConflict(f"the prior patient is linked to a {label}")
        if (
            relation.one_to_one
            and model._default_manager.filter(**{name: prior}).exists()
            and model._default_manager.filter(**{name: surviving}).exists()
        ):
            raise MergeConflict(
                f"both patients have a {label}; merge those by hand first"
            )
    for relation in Visit._meta.related_objects:
        model = relation.related_model
        lookup = {f"{relation.field.name}__patient": prior}
        if relation.many_to_many and model._default_manager.filter(**lookup).exists():
            raise MergeConflict(
                f"a visit of the prior patient is linked to a "
                f"{model._meta.verbose_name}"
            )


def _move_related(
    source: models.Model, target: models.Model, skip: type[models.Model] | None = None
) -> None:
    """Point every foreign key that refers to ``source`` at ``target``.

    Relations are read from the model, so that a model added later by
    another app moves too instead of blocking the delete.
    """
    for relation in type(source)._meta.related_objects:
        model = relation.related_model
        if model is skip or relation.many_to_many:
            continue
        name = relation.field.name
        model._default_manager.filter(**{name: source}).update(**{name: target})
