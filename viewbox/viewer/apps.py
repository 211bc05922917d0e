from django.apps import AppConfig


class ViewerConfig(AppConfig):
    name = "viewbox.viewer"
    label = "viewer"
