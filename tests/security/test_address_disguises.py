"""Addresses in disguise (findings 11 and 13 of issue #10): a display name showing the boss's address in
look-alike characters, and internal-looking addresses that route mail elsewhere."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from sendguard import checks, message, policy

POLICY = policy.build({"organization.internal_domains": ("example.co.jp",)})


def check(to: str) -> dict:
    msg = EmailMessage()
    msg["From"] = "taro@example.co.jp"
    msg["To"] = to
    msg["Subject"] = "s"
    msg.set_content("x")
    return checks.evaluate(message.parse(msg.as_bytes()), POLICY, set(), str).to_json()


@pytest.mark.parametrize("name", ["boss＠example.co.jp", "boss@example．co．jp", "boss\u200b@example.co.jp",
                                  "boss@\u2060example.co.jp", "boss@ example.co.jp", "boss ＠ example . co . jp"])
def test_display_name_with_a_lookalike_address_is_flagged(name: str) -> None:
    result = check(f'"{name}" <x@partner.example>')
    assert "display_name_mismatch" in result["recipients"][0]["flags"], name
    assert "display_name_mismatch" in [r["rule"] for r in result["verdict"]["reasons"]]


@pytest.mark.parametrize("to", ['"evil@attacker.example"@example.co.jp', "evil%attacker.example@example.co.jp",
                                "attacker.example!evil@example.co.jp"])
def test_routing_syntax_address_is_not_internal(to: str) -> None:
    result = check(to)
    assert "external" in result["recipients"][0]["flags"]
    assert result["verdict"]["action"] != "allow"
    assert "external_recipients" in [r["rule"] for r in result["verdict"]["reasons"]]


def test_plain_internal_address_stays_internal() -> None:
    result = check("Boss <boss@example.co.jp>")
    assert result["recipients"][0]["flags"] == [] and result["verdict"]["action"] == "allow"
