"""`sendguard policy export|import`: the policy travels with its files; a bad bundle changes nothing."""

from __future__ import annotations

import zipfile
from pathlib import Path

from conftest import run_cli

from sendguard import policy

POLICY = """# team policy
[organization]
internal_domains = ["example.co.jp"]
contacts = ["data/contacts.csv"]
lists = ["/ABS/lists.csv"]

[rules.suppression]
files = ["data/optout.csv", "more/optout.csv"]
action = "block"
"""


def make_policy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "more").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (src / "data" / "contacts.csv").write_text("address,name,company\nyamada@acorp.example,山田,Aコーポ\n",
                                               encoding="utf-8")
    (elsewhere / "lists.csv").write_text("list,member\nml@client.example,a@client.example\n", encoding="utf-8")
    (src / "data" / "optout.csv").write_text("gone@x.example\n", encoding="utf-8")
    (src / "more" / "optout.csv").write_text("*@unsub.example\n", encoding="utf-8")
    path = src / "policy.toml"
    path.write_text(POLICY.replace("/ABS", str(elsewhere)), encoding="utf-8")
    return path


def test_export_then_import_into_another_home(tmp_path, home):
    source = make_policy(tmp_path)
    bundle = tmp_path / "team-policy.zip"
    out = run_cli("policy", "export", str(bundle), "--policy", str(source))
    assert out.returncode == 0, out.stderr
    with zipfile.ZipFile(bundle) as z:
        assert sorted(z.namelist()) == ["files/contacts.csv", "files/lists.csv", "files/optout-2.csv",
                                        "files/optout.csv", "policy.toml"]
        assert "# team policy" in z.read("policy.toml").decode()
    out = run_cli("policy", "import", str(bundle))
    assert out.returncode == 0, out.stderr
    assert "1 contacts, 1 lists, 2 opt-out entries" in out.stdout.decode()
    loaded = policy.load(home / "policy.toml")
    assert loaded.contact_for("yamada@acorp.example").name == "山田"
    assert loaded.list_for("ml@client.example").members == ("a@client.example",)
    assert loaded.suppression.matches("gone@x.example") and loaded.suppression.matches("z@unsub.example")
    assert loaded.suppression.action == "block"


def test_a_bad_bundle_is_refused_and_changes_nothing(tmp_path, home):
    (home / "policy.toml").write_text('[confirm]\nwhen = "always"\n', encoding="utf-8")
    bundle = tmp_path / "bad.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("policy.toml", '[organization]\ncontacts = ["files/contacts.csv"]\n')
        z.writestr("files/contacts.csv", "address,name,company\nnot-an-address,X,Y\n")
    out = run_cli("policy", "import", str(bundle))
    err = out.stderr.decode()
    assert out.returncode == 1 and f"{bundle}:files/contacts.csv:2" in err and "Traceback" not in err
    assert (home / "policy.toml").read_text() == '[confirm]\nwhen = "always"\n'
    assert not (home / "files").exists()


def test_a_bundle_cannot_write_outside_the_home(tmp_path, home):
    bundle = tmp_path / "evil.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("policy.toml", "")
        z.writestr("../escape.txt", "x")
    out = run_cli("policy", "import", str(bundle))
    assert out.returncode == 1 and "unexpected file" in out.stderr.decode()
    assert not (tmp_path / "escape.txt").exists() and not (home / "policy.toml").exists()


def test_export_refuses_a_policy_that_does_not_load(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[organization]\ncontacts = ["missing.csv"]\n', encoding="utf-8")
    out = run_cli("policy", "export", str(tmp_path / "x.zip"), "--policy", str(path))
    assert out.returncode == 1 and "missing.csv" in out.stderr.decode()
    assert not (tmp_path / "x.zip").exists()
