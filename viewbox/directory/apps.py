from django.apps import AppConfig


class DirectoryConfig(AppConfig):
    name = "viewbox.directory"
    label = "directory"
