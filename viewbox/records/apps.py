from django.apps import AppConfig


class RecordsConfig(AppConfig):
    name = "viewbox.records"
    label = "records"
