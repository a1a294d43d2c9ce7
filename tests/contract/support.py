"""Running Schemathesis 4 against a live `keel serve`, as one kind of caller.

`run_schemathesis` loads the server's own /openapi.json, runs every phase Schemathesis
has (examples, coverage, fuzzing, stateful) with all its default checks, and returns
what failed, each failure with a line to reproduce it. Credentials come from a
`Caller`: a password sign-in (or an API key) of an account of one role. The run may
end that sign-in, or the account itself (logout-all, ending its own session, deleting
itself, an admin deactivating or demoting it): Schemathesis then gets a 401, asks the
caller again, and the caller signs in anew, first restoring the account in the
database if the sign-in is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from schemathesis.engine import Status, events, from_schema
from schemathesis.schemas import APIOperation

from keel.models import Role

Case = schemathesis.Case[APIOperation[Any, Any, Any, Any]]
TOKEN_PATH = "/api/v1/auth/token"
PASSWORD = "contract tests keep this one"


@dataclass(frozen=True, slots=True)
class Account:
    email: str
    role: Role


@dataclass
class Caller:
    """The credential one kind of caller sends, renewed whenever the run has ended it."""

    name: str
    base_url: str
    # None: anonymous. With an API key, the key is the credential.
    account: Account | None = None
    api_key: str | None = None
    # Puts the account back as it was (it runs on the test's event loop).
    restore: Callable[[Account], Awaitable[None]] | None = None
    # Runs `restore` from Schemathesis' threads.
    run_async: Callable[[Callable[[], Awaitable[None]]], None] | None = None
    renewals: int = 0

    def credential(self) -> str:
        if self.api_key is not None:
            return self.api_key
        assert self.account is not None, "an anonymous caller has no credential"
        token = self._sign_in(self.account)
        if token is None:
            # Deleted, deactivated or renamed by the run: put it back, then sign in.
            assert self.restore is not None
            assert self.run_async is not None
            restore, account = self.restore, self.account
            self.run_async(lambda: restore(account))
            token = self._sign_in(self.account)
        assert token is not None, f"{self.account.email} cannot sign in, even restored"
        self.renewals += 1
        return token

    def _sign_in(self, account: Account) -> str | None:
        response = requests.post(
            self.base_url + TOKEN_PATH,
            data={"grant_type": "password", "username": account.email, "password": PASSWORD},
            timeout=10,
        )
        if response.status_code == 400:
            return None
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def headers(self, credential: str) -> dict[str, str]:
        if self.api_key is not None:
            return {"X-API-Key": credential}
        return {"Authorization": f"Bearer {credential}"}


def new_account(role: Role) -> Account:
    return Account(f"contract-{role.value}-{uuid.uuid4().hex[:8]}@example.com", role)


def _provider_for(caller: Caller) -> type:
    class CallerCredential:
        """Schemathesis' auth provider: it caches what `get` returns until a 401."""

        def get(self, _case: Case, _context: schemathesis.AuthContext) -> str:
            return caller.credential()

        def set(self, case: Case, data: str, _context: schemathesis.AuthContext) -> None:
            case.headers.update(caller.headers(data))

    return CallerCredential


@dataclass(frozen=True, slots=True)
class KnownIssue:
    """A failure whose fix is made elsewhere: left out of the run's verdict, counted."""

    name: str
    matches: Callable[[Any, Case, schemathesis.Response], bool]


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    known: dict[str, int] = field(default_factory=dict)
    cases: int = 0
    stateful_scenarios: int = 0
    links_covered: set[str] = field(default_factory=set)
    seconds_by_phase: dict[str, float] = field(default_factory=dict)

    def report(self) -> str:
        lines = [f"{len(self.failures)} failures, {len(self.errors)} errors"]
        lines += self.failures + self.errors
        return "\n".join(lines)

    def summary(self, name: str, caller: Caller) -> str:
        left_out = ", ".join(f"{issue}: {count}" for issue, count in sorted(self.known.items()))
        return (
            f"{name}: {self.cases} cases, {self.stateful_scenarios} stateful scenarios "
            f"following {len(self.links_covered)} links, {caller.renewals} sign-ins; "
            f"seconds by phase {self.seconds_by_phase}; left out: {left_out or 'nothing'}"
        )


def run_schemathesis(
    base_url: str,
    caller: Caller,
    config: dict[str, Any],
    known_issues: Iterable[KnownIssue] = (),
) -> Outcome:
    """Every phase and default check of Schemathesis against the live server at
    `base_url`, with `caller`'s credentials (blocking: run it in a thread)."""
    settings = schemathesis.Config.from_dict(config)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=settings)
    outcome = Outcome()
    known = list(known_issues)

    @schema.hook
    def filter_failure(
        context: schemathesis.HookContext,
        failure: Any,
        case: Case,
        response: schemathesis.Response,
    ) -> bool:
        for issue in known:
            if issue.matches(failure, case, response):
                outcome.known[issue.name] = outcome.known.get(issue.name, 0) + 1
                return False
        return True

    if caller.account is not None or caller.api_key is not None:
        schema.auth()(_provider_for(caller))

    started: dict[str, float] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.PhaseStarted):
            started[event.phase.name.value] = event.timestamp
        elif isinstance(event, events.PhaseFinished) and event.phase.name.value in started:
            elapsed = event.timestamp - started[event.phase.name.value]
            outcome.seconds_by_phase[event.phase.name.value] = round(elapsed, 1)
        if isinstance(event, events.ScenarioFinished):
            _collect(event, outcome)
        elif isinstance(event, events.NonFatalError):
            outcome.errors.append(f"{event.label}: {event.info.title}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            outcome.errors.append(f"fatal: {event.exception!r}")
    return outcome


def _collect(event: events.ScenarioFinished, outcome: Outcome) -> None:
    recorder = event.recorder
    outcome.cases += len(recorder.cases)
    if event.phase.value == "stateful":
        outcome.stateful_scenarios += 1
        outcome.links_covered |= {
            node.transition.id
            for node in recorder.cases.values()
            if node.transition is not None and node.is_transition_applied
        }
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status != Status.FAILURE or check.failure_info is None:
                continue
            failure = check.failure_info.failure
            node = recorder.cases.get(case_id)
            label = node.value.operation.label if node is not None else recorder.label
            interaction = recorder.interactions.get(case_id)
            answer = ""
            if interaction is not None and interaction.response is not None:
                response = interaction.response
                body = (response.content or b"")[:300].decode(errors="replace")
                answer = f"  -> {response.status_code} {body}\n"
            outcome.failures.append(
                f"- {label} [{event.phase.value}] {check.name}: {failure.title}\n"
                f"  {failure.message.strip()[:300]}\n{answer}"
                f"  {check.failure_info.code_sample}"
            )
