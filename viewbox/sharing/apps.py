from django.apps import AppConfig


class SharingConfig(AppConfig):
    name = "viewbox.sharing"
    label = "sharing"
