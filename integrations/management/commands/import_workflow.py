"""``manage.py import_workflow FILE.json --name N [--ability CODE] [--kind comfyui] [--schema S]``"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from integrations.models import Ability, Executor, ExecutorKind, Workflow, WorkflowBinding
from integrations.services import (
    ability_create,
    binding_create,
    workflow_create,
    workflow_version_create,
)
from integrations.templating import SYSTEM_PREFIX, placeholders_in
from integrations.validation import MEDIA_FLAG, media_placeholders
from podi.errors import AppError


def _load(path: str, what: str):
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"{what} file not found: {path}")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"{what} file {path} is not valid JSON: {exc}") from None


def infer_schema(definition, kind: str) -> dict:
    """Every placeholder as a required string param; loader inputs marked as media."""
    names = sorted(n for n in placeholders_in(definition) if not n.startswith(SYSTEM_PREFIX))
    media = media_placeholders(definition) if kind == ExecutorKind.COMFYUI else set()
    properties = {}
    for name in names:
        prop = {"type": "string", "title": name}
        if name in media:
            prop[MEDIA_FLAG] = True
        properties[name] = prop
    return {"type": "object", "properties": properties, "required": names}


class Command(BaseCommand):
    help = (
        "Import a workflow definition as a new version (creating the workflow if needed). "
        "Without --schema the params schema is inferred from the {{placeholders}}, typed as "
        "strings."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="Definition JSON (ComfyUI: the API-format export)")
        parser.add_argument("--name", required=True, help="Workflow name")
        parser.add_argument("--kind", default="comfyui", choices=ExecutorKind.values)
        parser.add_argument("--schema", help="Params JSON Schema file (Draft 2020-12)")
        parser.add_argument("--outputs", help="Comma-separated output node ids (ComfyUI)")
        parser.add_argument("--changelog", default="", help="What changed in this version")
        parser.add_argument("--description", default="", help="Description of a new workflow")
        parser.add_argument(
            "--no-activate", action="store_true", help="Keep the current active version"
        )
        parser.add_argument(
            "--ability", help="Ability code to bind (created, inactive, when it does not exist)"
        )
        parser.add_argument(
            "--executor", help="Executor name for the binding (default: the only one of the kind)"
        )

    def handle(self, *args, **opts):
        definition = _load(opts["file"], "Definition")
        kind = opts["kind"]
        self.stdout.write(f"Read {opts['file']} ({kind}).")
        if opts["schema"]:
            schema = _load(opts["schema"], "Schema")
        else:
            schema = infer_schema(definition, kind)
            names = ", ".join(schema["properties"]) or "none"
            self.stdout.write(
                self.style.WARNING(
                    f"No --schema given: inferred one from {len(schema['properties'])} "
                    f"placeholder(s), all typed as strings ({names}). Review it in the admin "
                    "(types, defaults, ranges) before going live."
                )
            )
        outputs = [o.strip() for o in opts["outputs"].split(",")] if opts["outputs"] else None
        workflow = Workflow.objects.filter(name=opts["name"]).first()
        try:
            with transaction.atomic():  # a refused version leaves no empty workflow behind
                workflow, version = self._import(opts, workflow, kind, definition, schema, outputs)
        except AppError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        workflow.refresh_from_db()
        state = "active" if workflow.active_version_id == version.pk else "not active"
        self.stdout.write(
            self.style.SUCCESS(f"Imported {workflow.name} v{version.version} ({state}).")
        )
        if opts["ability"]:
            self._bind(opts, workflow)

    def _import(self, opts, workflow, kind, definition, schema, outputs):
        if workflow is None:
            workflow = workflow_create(
                name=opts["name"], kind=kind, description=opts["description"]
            )
            self.stdout.write(f"Created workflow {workflow.name!r}.")
        elif workflow.kind != kind:
            raise CommandError(
                f"Workflow {workflow.name!r} is a {workflow.kind} workflow, not {kind}."
            )
        version = workflow_version_create(
            workflow=workflow,
            definition=definition,
            params_schema=schema,
            outputs=outputs,
            changelog=opts["changelog"],
            activate=not opts["no_activate"],
        )
        return workflow, version

    def _bind(self, opts, workflow: Workflow) -> None:
        code = opts["ability"]
        ability = Ability.objects.filter(code=code).first()
        try:
            if ability is None:
                ability = ability_create(
                    code=code, display_name=code, status=Ability.Status.INACTIVE
                )
                self.stdout.write(
                    f"Created ability {code!r} (inactive: set its price and activate it)."
                )
            if WorkflowBinding.objects.filter(ability=ability, workflow=workflow).exists():
                self.stdout.write(f"Ability {code!r} is already bound to {workflow.name!r}.")
                return
            executors = Executor.objects.filter(kind=workflow.kind)
            if opts["executor"]:
                executor = executors.filter(name=opts["executor"]).first()
                if executor is None:
                    raise CommandError(f"No {workflow.kind} executor named {opts['executor']!r}.")
            elif executors.count() == 1:
                executor = executors.get()
            else:
                self.stdout.write(
                    self.style.WARNING(
                        f"Not bound: give --executor (there are {executors.count()} "
                        f"{workflow.kind} executors)."
                    )
                )
                return
            binding = binding_create(ability=ability, workflow=workflow, executor=executor)
        except AppError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        self.stdout.write(self.style.SUCCESS(f"Bound: {binding}."))
