"""Fuzz every operation of the OpenAPI schema with schemathesis: no input may cause a 500 (nor
a 5xx the operation does not document, such as 503 NO_EXECUTOR).

Runs against the real Django app (WSGI handler, real database and cache) as a staff user and as
a plain user, with schema-valid and schema-violating examples, a bounded number per operation
and a fixed seed, so a run takes about a minute on two cores and a failure reproduces.
Operations that call out to hosts named in their input (an executor check, an agent push) are
left out: tests never send traffic off this machine.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from hypothesis import HealthCheck, Phase, given
from schemathesis.generation import GenerationMode

from tests.conftest import access_token

pytestmark = pytest.mark.django_db(transaction=True)

STATS: dict[int, int] = {}  # status code -> count, across the module (a sanity check)
EXAMPLES_PER_OPERATION = 12
# (method, path) of operations that contact a URL taken from their input.
OUTBOUND = {
    ("POST", "/api/admin/executors/{executor_id}/check"),
    ("POST", "/api/admin/agents/{agent_id}/tasks"),
}


def is_server_error(operation, response) -> bool:
    """A 5xx the operation does not document with a stable code (a 503 ``NO_EXECUTOR`` for an
    ability without executors is an answer, not a crash); every 500 is a failure."""
    if response.status_code < 500:
        return False
    declared = str(response.status_code) in (operation.definition.raw.get("responses") or {})
    try:
        code = response.json().get("code")
    except ValueError:
        code = None
    return response.status_code == 500 or not declared or code in (None, "INTERNAL_ERROR")


def fuzz_operation(operation, principals: dict[str, dict], failures: list) -> None:
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @given(case=hypothesis.strategies.one_of(*(operation.as_strategy(m) for m in modes)))
    def run(case):
        for who, headers in principals.items():
            response = case.call(headers=headers)
            STATS[response.status_code] = STATS.get(response.status_code, 0) + 1
            if is_server_error(operation, response):
                failures.append(
                    f"{who}: {case.method} {case.formatted_path} "
                    f"query={case.query!r} body={case.body!r:.300} -> "
                    f"{response.status_code} {response.text[:300]}"
                )

    run()


@pytest.mark.timeout(300)
def test_no_operation_answers_a_server_error(owner, staff, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    schema = schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())
    principals = {
        "staff": {"Authorization": f"Bearer {access_token(staff)}"},
        "user": {"Authorization": f"Bearer {access_token(owner)}"},
    }
    failures: list[str] = []
    fuzzed = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in OUTBOUND:
            continue
        cache.clear()  # rate limits: each operation starts with a fresh budget
        fuzz_operation(operation, principals, failures)
        fuzzed.append(f"{operation.method.upper()} {operation.path}")
    assert len(fuzzed) >= 90, fuzzed
    assert sum(n for code, n in STATS.items() if code < 300) >= 150, STATS  # auth works
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:40])


@pytest.mark.parametrize("who", ["staff", "user"])
def test_call_sequences_along_inferred_links_answer_no_server_error(owner, staff, who):
    """Stateful: create something, then read, change and delete it (links inferred by
    schemathesis from the schema), so operations on existing rows are fuzzed too."""
    schema = schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())
    schema = schema.exclude(
        func=lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in OUTBOUND
    )
    headers = {"Authorization": f"Bearer {access_token(staff if who == 'staff' else owner)}"}
    failures: list[str] = []
    calls = [0]

    class Calls(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"headers": headers}

        def validate_response(self, response, case, **kwargs):
            calls[0] += 1
            STATS[response.status_code] = STATS.get(response.status_code, 0) + 1
            if is_server_error(case.operation, response):
                failures.append(
                    f"{case.method} {case.formatted_path} body={case.body!r:.300} -> "
                    f"{response.status_code} {response.text[:300]}"
                )

    cache.clear()
    try:
        Calls.run(
            settings=hypothesis.settings(
                max_examples=40,
                stateful_step_count=8,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
        )
    except hypothesis.errors.FlakyStrategyDefinition:
        # The rows earlier sequences created stay (one database for the whole run), so
        # hypothesis cannot always replay a sequence it derived from an earlier one; it stops
        # there. What the API answered until then is what this test judges.
        pass
    assert calls[0] >= 100, calls
    assert STATS.get(201, 0) >= 1, STATS  # something was created
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:40])
