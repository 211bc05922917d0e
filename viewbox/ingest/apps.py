import pydicom
from django.apps import AppConfig


class IngestConfig(AppConfig):
    name = "viewbox.ingest"
    label = "ingest"

    def ready(self) -> None:
        # pydicom checks each value it reads against its VR and logs a
        # warning that quotes a value that fails, such as a malformed birth
        # date. Viewbox checks the values it relies on itself. The setting
        # applies to the whole process, the viewer and the packages too.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
