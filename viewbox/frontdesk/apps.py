from django.apps import AppConfig


class FrontDeskConfig(AppConfig):
    name = "viewbox.frontdesk"
    label = "frontdesk"
