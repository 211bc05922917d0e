from django.apps import AppConfig


class DownloadsConfig(AppConfig):
    name = "viewbox.downloads"
    label = "downloads"
