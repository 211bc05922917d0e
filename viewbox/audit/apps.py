from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "viewbox.audit"
    label = "audit"

    def ready(self) -> None:
        from viewbox.audit import signals  # noqa: F401 (connects the receivers)
