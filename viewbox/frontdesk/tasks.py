import logging
from zoneinfo import ZoneInfo

from django.core.mail import send_mail
from django.tasks import task
from django.template.loader import render_to_string
from django.utils import formats, timezone, translation

from viewbox.accounts.email_codes import PORTAL_NAME
from viewbox.frontdesk.models import HelpRequest

logger = logging.getLogger(__name__)


@task()
def send_help_answer(help_request_id: int, portal_url: str) -> None:
    """Email the decision on a Get Help request, in the language it was sent in.

    The email says whether the I-Code works again and until when, or to call
    the imaging center. Its text names neither the patient nor the imaging
    group nor any exam, because a group's name can tell which care someone
    had. Its link, the sign-in page the request came from, does carry the
    group's and the location's slugs in its path. The date is given in the
    time zone of the location that issued the I-Code, as on the Portal Pass.
    """
    help_request = HelpRequest.objects.select_related(
        "icode__visit__location__state"
    ).get(pk=help_request_id)
    with translation.override(help_request.language):
        _send_help_answer(help_request, portal_url)


def _send_help_answer(help_request: HelpRequest, portal_url: str) -> None:
    approved = help_request.status == HelpRequest.Status.APPROVED
    context = {"portal_name": str(PORTAL_NAME), "portal_url": portal_url}
    if approved and help_request.icode is not None:
        icode = help_request.icode
        zone = ZoneInfo(icode.visit.location.state.time_zone)
        expires = timezone.localtime(icode.expires_at, zone)
        context["valid_until"] = formats.date_format(expires, "DATE_FORMAT")
    template = (
        "frontdesk/email/help_approved" if approved else "frontdesk/email/help_declined"
    )
    # A line break in a header would end it early.
    subject = " ".join(render_to_string(f"{template}_subject.txt", context).split())
    text = render_to_string(f"{template}.txt", context)
    html = render_to_string(f"{template}.html", context)
    send_mail(subject, text, None, [help_request.email], html_message=html)
    logger.info("Sent the decision on Get Help request %d", help_request.pk)
