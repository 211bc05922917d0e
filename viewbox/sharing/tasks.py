import logging

from django.core.mail import send_mail
from django.tasks import task
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import translation

from viewbox.sharing.models import ShareLink

logger = logging.getLogger(__name__)


@task()
def send_first_open_notice(link_id: int, base_url: str) -> None:
    """Tell the patient that someone opened their link for the first time.

    The email names neither the exams nor the link's nickname, which the
    patient may have written with health information in it.
    """
    link = ShareLink.objects.select_related("patient__group").filter(pk=link_id).first()
    if link is None or not link.notify_email:
        return
    path = reverse("viewer:group_portal", args=[link.patient.group.slug])
    context = {"portal_url": base_url.rstrip("/") + path}
    with translation.override(link.language):
        subject = render_to_string("sharing/email/first_open_subject.txt", context)
        body = render_to_string("sharing/email/first_open.txt", context)
    try:
        send_mail(" ".join(subject.split()), body, None, [link.notify_email])
    except OSError as error:
        logger.warning(
            "Failed to send the first-open notice of share link %d: %s",
            link.pk,
            type(error).__name__,
        )
