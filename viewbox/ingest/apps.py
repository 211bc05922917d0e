from django.apps import AppConfig


class IngestConfig(AppConfig):
    name = "viewbox.ingest"
    label = "ingest"
