"""Item ids: unique, 20 hex digits, and in the order they were made (a message taken in adds to the end of
the store's indexes on them), also from several threads at once and across processes."""

from __future__ import annotations

import subprocess
import sys
import threading

from sendguard.items import new_id


def test_ids_are_unique_hex_and_in_the_order_they_were_made() -> None:
    ids = [new_id() for _ in range(50_000)]  # many in each millisecond
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 20 and int(i, 16) >= 0 for i in ids)


def test_threads_never_share_an_id() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_id() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every)
    assert all(out == sorted(out) for out in made)


def test_two_processes_in_the_same_millisecond_start_apart() -> None:
    code = "from sendguard.items import new_id\nprint(' '.join(new_id() for _ in range(2000)))"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert not set(runs[0]) & set(runs[1])
    assert {i[11:] for i in runs[0]}.isdisjoint({i[11:] for i in runs[1]})  # the counted part too
