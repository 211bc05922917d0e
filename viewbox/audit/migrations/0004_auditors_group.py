"""Create the Auditors group: staff in it may read and export the audit log."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP_NAME = "Auditors"
PERMISSIONS = ["view_auditevent", "export_auditevent"]


def create_group(apps, schema_editor):
    # Permissions are normally made after all migrations ran; make the
    # audit app's ones now so that the group can hold them.
    audit_config = apps.get_app_config("audit")
    audit_config.models_module = True
    create_permissions(audit_config, apps=apps, verbosity=0)
    audit_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _created = Group.objects.get_or_create(name=GROUP_NAME)
    group.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="audit", codename__in=PERMISSIONS
        )
    )


def delete_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP_NAME).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0003_append_only"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(create_group, delete_group),
    ]
