from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.apps import apps
from django.db.models import Q, QuerySet
from django.utils import formats
from django.utils.translation import gettext as _

from viewbox.access.scope import Requester
from viewbox.audit.descriptions import ACTIVITY_ACTIONS, ActivityLine, describe
from viewbox.audit.models import AuditEvent
from viewbox.records.models import Exam

# Requesters who may see a patient's access history: the patient, through an
# account or an I-Code. Recipients of shared links may not.
ACTIVITY_REQUESTER_KINDS = frozenset({"account", "icode"})
# Entries about the visit's I-Codes, shown to I-Code sessions too.
VISIT_CODE_ACTIONS = ("icode.issue", "icode.revoke", "icode.help_approve")
# The model of shared links, with a ``nickname`` field, when installed.
SHARE_LINK_MODEL: str = "sharing.ShareLink"


def activity_events(requester: Requester) -> QuerySet[AuditEvent]:
    """Return the entries a patient may read about themselves, newest first.

    An account gets every entry about its patient. An I-Code session gets
    the entries about the exams its code opens, its own sign-ins and
    sign-outs, its links' use and the visit's codes, because the person
    holding the code may not be the patient.
    """
    events = AuditEvent.objects.filter(
        patient_id=requester.patient_id, action__in=ACTIVITY_ACTIONS
    )
    if requester.kind == "icode":
        from viewbox.sharing.actions import links_for

        own_entries = Q(actor_kind="icode", actor_id=str(requester.actor_id))
        # Links to the code's exams, and what recipients did with them.
        link_ids = list(links_for(requester).values_list("pk", flat=True))
        link_entries = Q(share_link_id__in=link_ids) | Q(
            actor_kind="share", actor_id__in=[str(pk) for pk in link_ids]
        )
        events = events.filter(
            Q(exam_id__in=requester.exam_ids)
            | own_entries
            | link_entries
            | Q(action__in=VISIT_CODE_ACTIONS)
        )
    return events.order_by("-sequence")


@dataclass(frozen=True)
class ActivityItem:
    at: datetime
    line: ActivityLine


def describe_events(
    requester: Requester, events: Iterable[AuditEvent]
) -> list[ActivityItem]:
    """Turn entries into sentences, naming exams and shared links."""
    events = list(events)
    exam_names = _exam_names(
        requester, {event.exam_id for event in events if event.exam_id}
    )
    link_names = _share_link_names({_link_id(event) for event in events} - {None})
    items = []
    for event in events:
        exam_name = exam_names.get(event.exam_id or 0, _("an exam"))
        link_name = _link_name(_link_id(event), link_names)
        actor_kind = _actor_kind_for(requester, event)
        line = describe(event.action, event.outcome, actor_kind, exam_name, link_name)
        items.append(ActivityItem(at=event.at, line=line))
    return items


def _actor_kind_for(requester: Requester, event: AuditEvent) -> str:
    """Return the actor kind to name, seen from the patient reading the page.

    "You" is only the same I-Code or the account reading the page. Another
    I-Code of the patient is named as such, because front desk may have
    printed it for someone else.
    """
    kind = event.actor_kind
    # A recipient acting on the link itself is named once, as "Someone".
    if kind == "share" and event.action.startswith("share."):
        return "anonymous"
    if kind == "icode" and not (
        requester.kind == "icode" and event.actor_id == str(requester.actor_id)
    ):
        return "other_icode"
    if kind == "account" and requester.kind != "account":
        return "other_account"
    return kind


def _link_name(link_id: int | None, names: dict[int, str]) -> str:
    if link_id is None:
        return _("(unknown)")
    return names.get(link_id) or _("number %(id)s") % {"id": link_id}


def _link_id(event: AuditEvent) -> int | None:
    if event.share_link_id is not None:
        return event.share_link_id
    if event.actor_kind == "share" and event.actor_id.isdigit():
        return int(event.actor_id)
    return None


def _exam_names(requester: Requester, exam_ids: set[int]) -> dict[int, str]:
    exams = Exam.objects.filter(
        pk__in=exam_ids, visit__patient_id=requester.patient_id
    ).select_related("visit")
    names = {}
    for exam in exams:
        day = formats.date_format(exam.visit.date_of_service, "DATE_FORMAT")
        names[exam.pk] = _("%(exam)s (%(date)s)") % {
            "exam": exam.description,
            "date": day,
        }
    return names


def _share_link_names(link_ids: set[int | None]) -> dict[int, str]:
    """Return the nicknames of shared links by id.

    The sharing app is optional here, so that this module does not depend on
    its models; without it links are named by their number.
    """
    try:
        share_link = apps.get_model(SHARE_LINK_MODEL)
    except LookupError:
        return {}
    rows = share_link.objects.filter(pk__in=link_ids).values_list("pk", "nickname")
    return {pk: _("“%(nickname)s”") % {"nickname": nick} for pk, nick in rows}
