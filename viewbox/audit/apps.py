from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "viewbox.audit"
    label = "audit"
