from django.apps import AppConfig


class AccessConfig(AppConfig):
    name = "viewbox.access"
    label = "access"
