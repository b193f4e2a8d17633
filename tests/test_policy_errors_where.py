"""A policy mistake names the place an editor can go to: the right line of the right table, even when
the table is one of several [[...]] of the same name, and a file saved with a BOM is read."""

from __future__ import annotations

import pytest
from conftest import make_message, run_cli

from sendguard import policy
from sendguard.errors import ConfigError

TWO_RULES = """[organization]
internal_domains = ["example.co.jp"]

[[rules.address]]
match = ["*@a.example"]
action = "block"

[[rules.address]]
match = ["*@b.example"]
action = "deny"
"""


def _refused(tmp_path, text: str) -> ConfigError:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        policy.load(path)
    return info.value


def test_a_mistake_in_the_second_of_two_tables_names_its_line_and_which_table(tmp_path):
    err = _refused(tmp_path, TWO_RULES)
    assert err.line == 10 and err.key == "rules.address.action"
    assert "policy.toml:10 [rules.address[2].action]: 'deny' is not one of" in str(err)


@pytest.mark.parametrize("text,line,key", [
    # a key missing from the third table: its header's line
    ('[[rules.keywords]]\npattern = "a"\n\n[[rules.keywords]]\npattern = "b"\n\n[[rules.keywords]]\naction = "block"\n',
     7, "rules.keywords.pattern"),
    ('[[rules.keywords]]\npattern = "a"\n\n[[rules.keywords]]\npattern = "("\n', 5, "rules.keywords.pattern"),
    ('[[rules.auto_cc]]\nwhen_attachment = true\ncc = ["a@example.co.jp"]\n\n[[rules.auto_cc]]\n'
     'when_keyword = "("\ncc = ["a@example.co.jp"]\n', 6, "rules.auto_cc.when_keyword"),
    ('[[rules.auto_cc]]\nwhen_attachment = true\ncc = ["a@example.co.jp"]\n\n[[rules.auto_cc]]\n'
     'when_attachment = true\n', 5, "rules.auto_cc"),
    ('[approval]\napprovers = ["boss@example.co.jp"]\n[[approval.route]]\nsenders = ["*@a.example.co.jp"]\n'
     'approvers = ["x@example.co.jp"]\n[[approval.route]]\nsenders = ["*@b.example.co.jp"]\napprovers = ["nobody"]\n',
     8, "approval.route.approvers"),
])
def test_the_line_is_the_one_of_the_table_at_fault(tmp_path, text, line, key):
    err = _refused(tmp_path, text)
    assert (err.line, err.key) == (line, key), str(err)


def test_a_single_table_keeps_its_plain_message(tmp_path):
    err = _refused(tmp_path, '[[rules.address]]\nmatch = ["*@x.example"]\naction = "warn"\n')
    assert err.line == 3 and "[rules.address.action]" in str(err)


def test_a_policy_saved_with_a_bom_is_read(tmp_path):
    """Notepad and many Japanese editors save UTF-8 'with BOM'; the file is still UTF-8."""
    path = tmp_path / "policy.toml"
    path.write_bytes('\ufeff[organization]\r\ninternal_domains = ["example.co.jp"]\r\n'
                     '[[rules.keywords]]\r\npattern = "社外秘"\r\naction = "block"\r\n'.encode())
    pol = policy.load(path)
    assert pol.internal_domains == ("example.co.jp",) and pol.keywords[0].pattern == "社外秘"


def test_check_on_a_folder_says_so_in_one_line(tmp_path):
    out = run_cli("check", str(tmp_path))
    err = out.stderr.decode()
    assert out.returncode != 0 and err.count("\n") == 1 and "Traceback" not in err
    assert str(tmp_path) in err and "folder" in err


def test_check_with_a_bom_policy(tmp_path):
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message(to="x@partner.example").as_bytes())
    pol = tmp_path / "p.toml"
    pol.write_bytes(b'\xef\xbb\xbf[organization]\ninternal_domains = ["example.co.jp"]\n')
    out = run_cli("check", str(eml), "--json", "--policy", str(pol))
    assert out.returncode == 0, out.stderr.decode()
