import logging
import warnings

import pydicom
from django.apps import AppConfig
from django.db.models.signals import post_delete


class IngestConfig(AppConfig):
    name = "viewbox.ingest"
    label = "ingest"

    def ready(self) -> None:
        # pydicom checks each value it reads against its VR and logs a
        # warning that quotes a value that fails, such as a malformed birth
        # date. Viewbox checks the values it relies on itself. The setting
        # applies to the whole process, the viewer and the packages too.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        # Other warnings quote header values too, such as an unknown
        # Specific Character Set (0008,0005). They go both to the "pydicom"
        # logger, limited here to errors because pydicom sets its level when
        # it is imported, and to Python's warnings, printed on standard error.
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")

        # A deleted quarantine row takes its file along: it may contain patient
        # data.
        from viewbox.ingest.models import QuarantinedFile
        from viewbox.ingest.quarantine import remove_quarantined_file

        post_delete.connect(
            remove_quarantined_file,
            sender=QuarantinedFile,
            dispatch_uid="remove_quarantined_file",
        )
