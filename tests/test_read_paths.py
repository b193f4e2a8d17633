"""Reading commands take the light path (#14 item 4), and the intake's shortcuts keep their promises.

* `queue list` and `check` read the store with the standard library: no SQLAlchemy, keyring, audit key
  or rule tables they do not need are loaded (what made them take 0.6-0.7 s of CPU);
* what they read is what the full outbox reads (same items, same summaries, same history);
* the sent-to domains the intake keeps in memory never hide a release;
* the audit key is read when the helper starts, and the legacy marker lives in the database, keyed.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_message, run_cli
from sqlalchemy import JSON

from sendguard import secrets
from sendguard.outbox import HELD_STATES, Incoming, Outbox
from sendguard.policy import load
from sendguard.store import LEGACY_END_SETTING, Store, outbox, server_settings
from sendguard.store_read import JSON_COLUMNS, LIST_COLUMNS, open_store

POLICY = '[organization]\ninternal_domains = ["example.co.jp"]\n'


def _filled(home: Path, n: int = 5) -> tuple[Store, Outbox]:
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    store = Store(home / "sendguard.db")
    box = Outbox(store, lambda: load(home / "policy.toml"))
    raws = [make_message(to=f"user{i}@partner{i}.example", subject=f"見積 {i}").as_bytes() for i in range(n)]
    box.receive_many([Incoming(raw, "taro@example.co.jp", [f"user{i}@partner{i}.example"])
                      for i, raw in enumerate(raws)], check=True)
    box.cancel(box.list()[0].id)
    return store, box


def test_queue_list_and_check_load_no_database_layer_keyring_or_unneeded_tables(home: Path) -> None:
    store, _box = _filled(home)
    store.close()
    eml = home / "m.eml"
    eml.write_bytes(make_message(to="x@partner.example", body="plain text").as_bytes())
    # rapidfuzz: no domain here is within an edit or two of a reference one; plistlib: macOS profiles;
    # the connectors' interface: the directory only catches their errors
    heavy = ["sqlalchemy", "keyring", "Crypto", "babel", "tomlkit", "confusable_homoglyphs", "puremagic",
             "importlib.metadata", "rapidfuzz", "plistlib", "sendguard.mailboxes.base"]
    for args in (["queue", "list"], ["queue", "list", "--json", "--all"], ["check", str(eml)]):
        code = ("import sys\nfrom sendguard.cli import main\n"
                f"try:\n    main({args!r}, prog_name='sendguard')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
        out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True,
                             cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        loaded = json.loads(out.stdout.strip().splitlines()[-1])
        assert loaded == [], f"`sendguard {' '.join(args)}` imported {loaded}"
    listing = subprocess.run([sys.executable, "-c", "import sys\nfrom sendguard.cli import main\ntry:\n"
                              "    main(['queue', 'list'], prog_name='sendguard')\nexcept SystemExit:\n    pass\n"
                              "print([m for m in ('sendguard.message', 'email.policy', 'sendguard.policy') "
                              "if m in sys.modules])"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert listing.stdout.strip().splitlines()[-1] == "[]", listing.stdout + listing.stderr


def test_read_store_lists_what_the_outbox_lists(home: Path) -> None:
    store, box = _filled(home)
    read = open_store(home / "sendguard.db")
    assert read is not None
    for states in (None, HELD_STATES, ["cancelled"]):
        assert [i.summary() for i in read.items(states)] == [i.summary() for i in box.list(states)]
        assert [i.__dict__ for i in read.items(states)] == [i.__dict__ for i in box.list(states)]
    assert [i.id for i in read.items(owner="TARO@example.co.jp")] == [i.id for i in box.list(owner="taro@example.co.jp")]
    listed = json.loads(run_cli("queue", "list", "--json", "--all").stdout)
    assert listed == [i.summary() for i in box.list()]
    read.close()
    store.close()


def test_read_store_follows_the_schema() -> None:
    assert JSON_COLUMNS == {c.name for c in outbox.c if isinstance(c.type, JSON)}
    assert set(LIST_COLUMNS) == {c.name for c in outbox.c} - {"raw", "final_raw"}


def test_an_older_store_is_opened_the_full_way_and_migrated(home: Path) -> None:
    store, box = _filled(home)
    ids = [i.id for i in box.list(HELD_STATES)]
    store.close()
    with sqlite3.connect(home / "sendguard.db") as conn:
        conn.execute("PRAGMA user_version = 1")
    assert open_store(home / "sendguard.db") is None
    out = run_cli("queue", "list", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["id"] for r in json.loads(out.stdout)] == ids
    assert open_store(home / "sendguard.db") is not None  # migrated by the full path


def test_check_counts_the_sent_to_history(home: Path) -> None:
    store, _box = _filled(home)
    with store.transaction() as conn:
        store.record_sent_domains(conn, ["someone@partner.example"], 0.0)
    store.close()
    eml = home / "m.eml"
    eml.write_bytes(make_message(to="x@partner.example", body="plain text").as_bytes())
    new = make_message(to="x@other.example", body="plain text").as_bytes()
    known = json.loads(run_cli("check", "--json", str(eml)).stdout)
    (home / "n.eml").write_bytes(new)
    unknown = json.loads(run_cli("check", "--json", str(home / "n.eml")).stdout)
    assert "new_domain" not in [r["rule"] for r in known["verdict"]["reasons"]]
    assert "new_domain" in [r["rule"] for r in unknown["verdict"]["reasons"]]


def test_a_release_makes_its_domain_known_to_the_next_check_at_once(home: Path) -> None:
    store, box = _filled(home, n=1)
    rules = lambda raw: [r.rule for r in box.evaluate(raw, "taro@example.co.jp", ["x@fresh.example"]).reasons]  # noqa: E731
    raw = make_message(to="x@fresh.example", body="plain text").as_bytes()
    assert "new_domain" in rules(raw)  # now remembered as new for a moment
    item_id = box.receive(raw, "taro@example.co.jp", ["x@fresh.example"])
    box.process(item_id)
    box.confirm(item_id)
    with store.transaction() as conn:  # as a release does (Outbox._sent)
        conn.execute(outbox.update().where(outbox.c.id == item_id).values(state="releasing"))
    box._sent(box.get(item_id), {"transport": "test"})
    assert "new_domain" not in rules(raw)
    store.close()


def test_the_helper_reads_the_audit_key_at_start(helper, home: Path) -> None:
    (home / "policy.toml").write_text(POLICY, encoding="utf-8")
    h = helper()
    assert h.store._audit_key is not None  # before any message came in


def test_the_legacy_marker_is_kept_in_the_database_keyed(home: Path) -> None:
    store, _box = _filled(home, n=1)
    db_id = store.setting("audit_db_id", str)
    assert secrets.get(f"audit-legacy-end:{db_id}") is None  # not in the keyring
    with store.engine.connect() as conn:
        value = conn.execute(server_settings.select().where(server_settings.c.key == LEGACY_END_SETTING)).one().value
    assert value.startswith("0:") and len(value) == 2 + 64  # a new store: every record keyed
    store.close()
    # whoever edits the database cannot move the marker to pass re-hashed records off as unkeyed
    with sqlite3.connect(home / "sendguard.db") as conn:
        conn.execute("UPDATE server_settings SET value = ? WHERE key = ?", (f"99:{'0' * 64}", LEGACY_END_SETTING))
    assert Store(home / "sendguard.db").audit_legacy_end == 0


def test_a_marker_an_older_helper_kept_in_the_keyring_moves_into_the_database(home: Path) -> None:
    store, _box = _filled(home, n=1)
    db_id = store.setting("audit_db_id", str)
    store.close()
    with sqlite3.connect(home / "sendguard.db") as conn:
        conn.execute("DELETE FROM server_settings WHERE key = ?", (LEGACY_END_SETTING,))
    secrets.put(f"audit-legacy-end:{db_id}", "1")
    reopened = Store(home / "sendguard.db")
    assert reopened.audit_legacy_end == 1
    assert reopened.setting(LEGACY_END_SETTING, str).startswith("1:")
    reopened.close()


@pytest.fixture(autouse=True)
def _no_audit_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENDGUARD_AUDIT_KEY", raising=False)


def test_public_suffixes_are_found_as_with_the_full_list() -> None:
    """``detect.registrable`` loads the list without the xn-- forms of IDN rules unless the domain has an
    xn-- label: every rule of the list, in Unicode and in xn-- form, gets the same suffix as before."""
    from pathlib import Path

    import publicsuffixlist
    from publicsuffixlist import PublicSuffixList

    from sendguard import detect

    full = PublicSuffixList()
    plain = PublicSuffixList(accept_encoded_idn=False)
    assert detect._psl(False)._publicsuffix == plain._publicsuffix
    assert detect._psl(False)._maxlabel == plain._maxlabel
    data = Path(publicsuffixlist.__file__).with_name("public_suffix_list.dat").read_text(encoding="utf-8")
    rules = [line.strip().lstrip("*.!") for line in data.splitlines() if line.strip() and not line.startswith("//")]
    checked = 0
    for rule in rules:
        for domain in (f"example.{rule}".lower(), f"a.b.{rule}".lower(), rule.lower()):
            forms = [domain]
            try:
                forms.append(domain.encode("idna").decode("ascii"))
            except UnicodeError:
                pass
            for form in forms:
                assert detect._psl("xn--" in form).publicsuffix(form) == full.publicsuffix(form), form
                checked += 1
    assert checked > 20_000


def _suffix_list(path: Path, rules: list[str]) -> str:
    path.write_text("// a comment: example.com is not a rule\n" + "\n".join(rules) + "\n", encoding="utf-8")
    return str(path)


def test_public_suffix_rules_are_kept_in_the_home_and_read_again_when_the_list_changes(
        sg_env: Path, tmp_path: Path) -> None:
    """The rules are read once and kept in the home (private to the user); a list of another size or time
    is read again, and a cache that cannot be read is replaced rather than trusted."""
    import os
    import stat

    from sendguard import detect

    source = _suffix_list(tmp_path / "list.dat", ["jp", "co.jp", "*.kawasaki.jp", "!city.kawasaki.jp"])
    rules, most = detect._suffix_rules(source)
    assert rules == {"jp", "co.jp", "*.kawasaki.jp", "!city.kawasaki.jp"} and most == 3
    cache = sg_env / "cache" / "public_suffix_rules.marshal"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700

    # the cached copy is what is read next: the file is not parsed again while it is unchanged
    original, st = Path(source).read_bytes(), os.stat(source)
    Path(source).write_bytes(original.replace(b"co.jp", b"ne.jp"))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert detect._suffix_rules(source)[0] == rules  # same size, same time: the cache answers

    # a newer list (another modification time) is read again, and the cache follows it
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert "ne.jp" in detect._suffix_rules(source)[0]
    assert "co.jp" not in detect._suffix_rules(source)[0]

    # a damaged cache is never taken for rules
    for junk in (b"", b"\x00garbage", __import__("marshal").dumps(("not", "the", "shape"))):
        cache.write_bytes(junk)
        assert detect._suffix_rules(source)[0] == {"jp", "ne.jp", "*.kawasaki.jp", "!city.kawasaki.jp"}
    assert cache.read_bytes() not in (b"", b"\x00garbage")


def test_public_suffix_rules_do_not_create_a_missing_home(sg_env: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Looking a domain up (as ``doctor`` does) never creates the home: the rules are read, not kept."""
    from sendguard import detect

    missing = tmp_path / "no-home-yet"
    monkeypatch.setenv("SENDGUARD_HOME", str(missing))
    source = _suffix_list(tmp_path / "list.dat", ["com"])
    assert detect._suffix_rules(source) == (frozenset({"com"}), 1)
    assert not missing.exists()
