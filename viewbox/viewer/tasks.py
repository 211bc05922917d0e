import logging
from typing import Final

from django.conf import settings
from django.tasks import task

from viewbox.records.models import Instance
from viewbox.viewer.previews import warm_previews
from viewbox.viewer.rendering import RenderError

logger = logging.getLogger(__name__)

# View sizes up to this edge are rendered ahead, with the tile. The larger
# ones are rendered when first requested.
_WARMED_MAX_VIEW_EDGE: Final = 1024


@task()
def render_previews(instance_id: int) -> None:
    """Render the first frame's tile and smaller views of a newly stored image.

    One decode makes them all, before the first request for them.
    """
    _render_previews(instance_id)


@task()
def render_previews_of_instances(instance_ids: list[int]) -> None:
    """Render the previews of several newly stored images, one after another.

    The DICOM receiver queues one task for the instances it stored within a
    second, because queueing a task costs about as much as storing a row.
    """
    for instance_id in instance_ids:
        _render_previews(instance_id)


def _render_previews(instance_id: int) -> None:
    instance = Instance.objects.filter(pk=instance_id).first()
    if instance is None or not instance.has_pixels:
        return

    view_edges = [
        edge for edge in settings.RENDER_VIEW_EDGES if edge <= _WARMED_MAX_VIEW_EDGE
    ]
    try:
        warm_previews(instance, frame=0, edges=[settings.RENDER_TILE_EDGE, *view_edges])
    except RenderError as error:
        # RenderError messages name tags and values, never patient data.
        logger.warning("Cannot render instance %d: %s", instance_id, error)
    except OSError as error:
        # A stored file that cannot be read is an operator's problem; the
        # task must not fail over and over for it.
        logger.error("Cannot read instance %d: %s", instance_id, type(error).__name__)
