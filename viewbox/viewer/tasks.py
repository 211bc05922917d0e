import logging

from django.conf import settings
from django.tasks import task

from viewbox.records.models import Instance
from viewbox.viewer.previews import preview_jpeg
from viewbox.viewer.rendering import RenderError

logger = logging.getLogger(__name__)


@task()
def render_previews(instance_id: int) -> None:
    """Render the tile of a newly stored image before anyone asks for it."""
    instance = Instance.objects.filter(pk=instance_id).first()
    if instance is None or not instance.has_pixels:
        return
    try:
        preview_jpeg(instance, frame=0, edge=settings.RENDER_TILE_EDGE)
    except RenderError as error:
        logger.warning("Cannot render instance %d: %s", instance_id, error)
