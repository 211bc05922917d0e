from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "viewbox.accounts"
    label = "accounts"
