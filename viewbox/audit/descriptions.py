"""Sentences that tell patients what an audit entry means.

Each sentence names who acted (``%(who)s``) and, where the entry is about an
exam, which one (``%(exam)s``). Shared links are named (``%(link)s``) by
their nickname in quotes, or by their number when the nickname is unknown.
Only the actions listed here appear on the Activity page: imports and other
work of the portal itself are left out.
"""

from dataclasses import dataclass

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

# Sentences for entries whose outcome is success, by action.
SUCCESS_SENTENCES: dict[str, Promise] = {
    "exam.list": _("%(who)s viewed the list of your exams."),
    "exam.summary": _("%(who)s viewed the visit summary of %(exam)s."),
    "report.view": _("%(who)s viewed the report of %(exam)s."),
    "report.unavailable": _(
        "%(who)s opened the report of %(exam)s before it was available."
    ),
    "report.print": _("%(who)s opened the print view of the report of %(exam)s."),
    "images.list": _("%(who)s viewed the images of %(exam)s."),
    "image.view": _("%(who)s viewed an image of %(exam)s."),
    "download.request": _("%(who)s asked for a download of %(exam)s."),
    "download.file": _("%(who)s downloaded %(exam)s."),
    "share.create": _("%(who)s created the shared link %(link)s."),
    "share.change": _("%(who)s changed the shared link %(link)s."),
    "share.revoke": _("%(who)s revoked the shared link %(link)s."),
    "share.open": _("%(who)s opened the shared link %(link)s."),
    "share.unlock": _("%(who)s unlocked the shared link %(link)s."),
    "share.password": _("%(who)s entered the password of the shared link %(link)s."),
    "icode.issue": _("An I-Code was issued for your visit."),
    "icode.sign_in": _("%(who)s signed in with an I-Code."),
    "account.create": _("Your account was created."),
    "account.log_in": _("%(who)s logged in to your account."),
    "account.password_reset": _("The password of your account was changed."),
    "sign_out": _("%(who)s signed out."),
    "frontdesk.print_pass": _("%(who)s printed a Portal Pass for %(exam)s."),
    "icode.revoke": _("%(who)s turned off an earlier I-Code for your visit."),
    "icode.help_approve": _("%(who)s reactivated an I-Code for your visit."),
    "images.attach": _("%(who)s attached waiting images to %(exam)s."),
    "patient.merge": _("Two of your records were merged into one."),
    "staff.view_exam": _("%(who)s viewed the details of %(exam)s."),
    "staff.view_study": _("%(who)s viewed the image details of %(exam)s."),
}

# Sentences for refused attempts. A failed action that is not listed here
# shows its success sentence with the word "Refused" beside it.
FAILURE_SENTENCES: dict[str, Promise] = {
    "share.password": _(
        "%(who)s entered a wrong password for the shared link %(link)s."
    ),
    "share.open": _("%(who)s tried to open the shared link %(link)s."),
    "icode.sign_in_expired": _("%(who)s tried to sign in with an expired I-Code."),
    "account.sign_up_locked": _(
        "Account sign-up for your records was blocked after wrong answers."
    ),
}

ACTIVITY_ACTIONS = frozenset(SUCCESS_SENTENCES) | frozenset(FAILURE_SENTENCES)

# Names of the actor, by the entry's actor_kind.
ACTOR_NAMES: dict[str, Promise] = {
    "account": _("You"),
    "icode": _("You"),
    "other_icode": _("Someone with an I-Code for your visit"),
    "other_account": _("Someone logged in to your account"),
    "share": _("Someone using your shared link %(link)s"),
    "staff": _("A staff member"),
    "user": _("A staff member"),
    "anonymous": _("Someone"),
}
VIA_NAMES: dict[str, Promise] = {
    "account": _("With your account"),
    "icode": _("With an I-Code"),
    "other_icode": _("With an I-Code"),
    "other_account": _("With your account"),
    "share": _("With a shared link"),
    "staff": _("By the imaging group"),
    "user": _("By the imaging group"),
}


@dataclass(frozen=True)
class ActivityLine:
    """One audit entry as the patient reads it."""

    sentence: str
    via: str
    refused: bool


def describe(
    action: str,
    outcome: str,
    actor_kind: str,
    exam_name: str,
    link_name: str,
) -> ActivityLine:
    """Return the sentence for one entry, in the active language."""
    refused = outcome != "success"
    template = (FAILURE_SENTENCES.get(action) if refused else None) or (
        SUCCESS_SENTENCES.get(action, _("%(who)s used the portal."))
    )
    who = str(ACTOR_NAMES.get(actor_kind, _("The portal"))) % {"link": link_name}
    sentence = str(template) % {"who": who, "exam": exam_name, "link": link_name}
    return ActivityLine(
        sentence=sentence,
        via=str(VIA_NAMES.get(actor_kind, "")),
        refused=refused and action not in FAILURE_SENTENCES,
    )
