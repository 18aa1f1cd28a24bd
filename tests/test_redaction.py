"""Redaction rules on literals: key blocks across journal lines, what the high-entropy rule
keeps on purpose, and bounds on the time a hostile line can cost. The corpus of secrets
and ordinary lines, through the analyze path, is tests/test_redaction_corpus.py."""

from __future__ import annotations

import base64
import random
import time
from datetime import UTC, datetime

import pytest

from macha_obs.agent import prompt as P
from macha_obs.agent.redact import looks_random, redact, redact_lines, shannon_entropy
from macha_obs.agent.schema import LlmToolCall
from macha_obs.agent.tools import ToolSession
from macha_obs.models import Alert, Diagnostic, ExecutionResult, Incident
from tests.harness.receiver_support import alert

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
J = "2026-11-25T11:59:58+0000 web1 app[7]: "
PEM = [
    J + "-----BEGIN RSA PRIVATE KEY-----",
    J + "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfnygWyF8PbnGy0AHB7MhgwMbRvI0MBZhpF",
    J + "9kr574CsZdOtuK85",
    J + "-----END RSA PRIVATE KEY-----",
]


def test_a_block_across_lines_leaves_one_line_naming_it() -> None:
    lines = [J + "starting", *PEM, J + "listening on :443"]
    assert redact_lines(lines) == [
        J + "starting",
        J + "[REDACTED RSA PRIVATE KEY]",
        J + "listening on :443",
    ]


def test_a_block_cut_short_does_not_swallow_the_lines_after_it() -> None:
    lines = [*PEM[:2], J + "worker 3 exited with status 1", J + "ok"]
    assert redact_lines(lines) == [
        J + "[REDACTED RSA PRIVATE KEY]",
        J + "worker 3 exited with status 1",
        J + "ok",
    ]


def test_a_body_line_alone_is_caught() -> None:
    assert redact_lines([PEM[1]]) == [J + "[REDACTED 63 chars]"]


def test_a_block_whose_begin_is_older_than_the_kept_lines() -> None:
    """The prompt keeps the newest lines; the block's BEGIN may be just older than them."""
    tail = [J + f"request {i} served" for i in range(5000)]
    journal = [*PEM[:3], *(J + "9kr574CsZdOtuK8" for _ in range(400)), PEM[3], *tail[:200]]
    ctx = P.PromptContext(
        incident=Incident(id="am-1", source="alert",
                          alerts=[Alert.model_validate(alert(unit="a.service"))]),
        hostname="h", now=NOW, journals={"a.service": journal}, budget=1200,
    )  # fmt: skip
    user = P.build_prompt(ctx).messages[1]["content"]
    assert "9kr574CsZdOtuK8" not in user  # short body lines: only the block tells them apart
    assert "request 199 served" in user


def test_armor_in_alert_text_and_tool_output() -> None:
    inc = Incident(
        id="am-1",
        source="alert",
        alerts=[
            Alert.model_validate(
                alert(unit="a.service") | {"annotations": {"summary": "leaked " + "\\n".join(PEM)}}
            )
        ],
    )
    user = P.build_prompt(P.PromptContext(incident=inc, hostname="h", now=NOW)).messages[1]
    assert "MIIEowIBAAKCAQEA" not in user["content"]
    assert "[REDACTED RSA PRIVATE KEY]" in user["content"]
    # a diagnostic's output is cleaned line by line: a long body line is still caught
    result = ToolSession(_Diagnostics(), token_limit=10_000).invoke(
        LlmToolCall(tool="journal_tail", unit="a.service")
    )
    assert result.status == "ok"
    assert "MIIEowIBAAKCAQEA" not in result.output
    assert "[REDACTED RSA PRIVATE KEY]" in result.output


class _Diagnostics:
    def run(self, diag: Diagnostic) -> ExecutionResult:
        return ExecutionResult(ok=True, output="\n".join(PEM[:2]))


@pytest.mark.parametrize(
    "kept",
    [
        "3f2a8e1c-5b7d-4c2e-9a1f-6d8e0b2c4a11",  # UUID
        "0f2c8a8e1f8c4b9f9d4b2a1c3e5f7a9b",  # machine id
        "18418a950e775a610b3bbc0ee4431a08683537e386ee6dbeef46c3378af4bf6b",  # sha256
        "8dj1i7k2ylz0c2w3ymsm2y3q5hkxgf1c-nginx-1",  # nix store hash: lower case only
        "SystemdJournalFlushServiceConfiguration2024",  # an identifier
        "org_freedesktop_systemd1_Manager_StartUnitReplace",
        "nvme-Samsung_SSD_970_EVO_Plus_1TB_S4EWNX0R123456W",  # a device id
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA1a",  # low entropy
        "HTTP_X_FORWARDED_FOR_CLIENT_IP_ADDRESS_HEADER_2",
    ],
)
def test_what_the_entropy_rule_keeps(kept: str) -> None:
    assert not looks_random(kept)
    assert redact(f"saw {kept} here") == f"saw {kept} here"


def test_labelled_digests_and_paths_are_kept() -> None:
    for line in (
        "sshd: Accepted publickey: ED25519 SHA256:u5Y4s3W6m8n0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0U",
        "nix: got: sha256-Xy9zQ1w2E3r4T5y6U7i8O9p0AaBbCcDdEeFfGgHhIiJ=",
        "/dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z1NB0K123456X",
        "/run/log/journal/0f2c8a8e1f8c4b9f9d4b2a1c3e5f7a9b/system.journal",
    ):
        assert redact(line) == line
    # a secret segment of a path is still one
    assert redact("/hook/4uV3I53JZE8yf13lLOp2ZVVfaXtrHPw-ZPWZIIxblk0") == (
        "/hook/[REDACTED 43 chars]"
    )


def test_random_strings_are_caught() -> None:
    """At least 99.8% of random base64 and base64url strings of 32+ characters."""
    rng = random.Random(15)
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for length in (32, 40, 64):
            samples = [encode(rng.randbytes(length)).decode()[:length] for _ in range(500)]
            caught = sum(looks_random(s) for s in samples)
            assert caught >= 499, (encode.__name__, length, caught)
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("abab") == 1.0


def test_sudo_working_directory_is_not_a_password() -> None:
    line = "sudo: alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/true"
    assert redact(line) == line
    assert redact("Server=db;Pwd=OdbcPw26;") == "Server=db;Pwd=[REDACTED];"


@pytest.mark.parametrize(
    "text",
    [
        "a" * 100_000,
        "mysql " * 20_000,
        "a.a." * 25_000,
        "sk-" * 30_000,
        "http://" + "a:" * 40_000,
        "-----BEGIN X-----" * 5_000,
        '"Authorization: ' * 6_000,
        "password= " * 10_000,
        "Ab1/" * 25_000,
    ],
)
def test_a_hostile_line_costs_linear_time(text: str) -> None:
    start = time.perf_counter()
    redact(text)
    assert time.perf_counter() - start < 2.0
