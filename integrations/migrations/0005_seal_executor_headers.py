"""Executor header values move from plain ``config["headers"]`` to Fernet-encrypted
``config["headers_encrypted"]`` (see integrations.validation); reversible."""

import json

from django.db import migrations


def seal(apps, schema_editor):
    from podi.crypto import encrypt_secret

    Executor = apps.get_model("integrations", "Executor")
    for executor in Executor.objects.all():
        config = dict(executor.config or {})
        headers = config.pop("headers", None)
        if not isinstance(headers, dict):
            continue
        if headers:
            config["headers_encrypted"] = encrypt_secret(json.dumps(headers, sort_keys=True))
        Executor.objects.filter(pk=executor.pk).update(config=config)


def unseal(apps, schema_editor):
    from podi.crypto import decrypt_secret

    Executor = apps.get_model("integrations", "Executor")
    for executor in Executor.objects.all():
        config = dict(executor.config or {})
        sealed = config.pop("headers_encrypted", None)
        if sealed:
            config["headers"] = json.loads(decrypt_secret(sealed))
            Executor.objects.filter(pk=executor.pk).update(config=config)


class Migration(migrations.Migration):
    dependencies = [("integrations", "0004_binding_node_check")]

    operations = [migrations.RunPython(seal, unseal)]
