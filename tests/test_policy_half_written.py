"""A policy file read while an editor was writing it (truncated, then written) is read again once it is
whole, even when the file system gave both writes the same modification time: the empty file read in
between held no rules, and stayed in force (a keyword that asks for approval let mail through)."""

from __future__ import annotations

import os

from sendguard.policy import PolicyHolder

FULL = ('[organization]\ninternal_domains = ["example.co.jp"]\n[approval]\napprovers = ["boss@example.co.jp"]\n'
        '[[rules.keywords]]\npattern = "社外秘"\naction = "approve"\n')


def test_a_policy_read_half_written_is_read_again_when_whole(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(FULL, encoding="utf-8")
    holder = PolicyHolder(path)
    assert [k.pattern for k in holder.get().keywords] == ["社外秘"]
    stamp = path.stat().st_mtime_ns
    path.write_text("", encoding="utf-8")  # the editor has truncated the file ...
    os.utime(path, ns=(stamp + 1000, stamp + 1000))
    assert holder.get().keywords == ()  # ... and a message is checked right then
    path.write_text(FULL, encoding="utf-8")  # ... then writes it, within the same clock tick
    os.utime(path, ns=(stamp + 1000, stamp + 1000))
    assert [k.pattern for k in holder.get().keywords] == ["社外秘"]
