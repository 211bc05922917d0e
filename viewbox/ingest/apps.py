import pydicom
from django.apps import AppConfig


class IngestConfig(AppConfig):
    name = "viewbox.ingest"
    label = "ingest"

    def ready(self) -> None:
        # pydicom checks each value it reads against its VR, and its warning
        # about one that fails quotes it, such as a malformed birth date,
        # into the log. Viewbox checks what it relies on itself. The setting
        # holds for the whole process: the viewer and the packages too.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
