"""Create the Front desk group: staff in it may use the front desk pages."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP_NAME = "Front desk"
PERMISSION = "use_front_desk"


def create_group(apps, schema_editor):
    # Permissions are normally made after all migrations ran; make this
    # app's ones now so that the group can hold them.
    config = apps.get_app_config("frontdesk")
    config.models_module = True
    create_permissions(config, apps=apps, verbosity=0)
    config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _created = Group.objects.get_or_create(name=GROUP_NAME)
    group.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="frontdesk", codename=PERMISSION
        )
    )


def delete_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("frontdesk", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="helprequest",
            options={
                "ordering": ["created_at", "pk"],
                "permissions": [
                    (
                        "use_front_desk",
                        "Can print Portal Passes, answer Get Help and attach images",
                    )
                ],
                "verbose_name": "Get Help request",
            },
        ),
        migrations.RunPython(create_group, delete_group),
    ]
