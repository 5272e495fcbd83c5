"""Prefix queries over a million keys agree with a brute-force scan."""

from __future__ import annotations

import random

from rayconf.store.keys import prefix_end
from rayconf.store.mvcc import MVCC
from rayconf.store.records import Put, RangeRequest, Txn

KEY_COUNT = 1_000_000
BATCH = 128


def test_million_key_prefixes_match_scan() -> None:
    generator = random.Random(11)
    keys = sorted({
        f"/app{generator.randrange(20)}/svc{generator.randrange(50)}/k{generator.randrange(10**9)}".encode()
        for _ in range(KEY_COUNT + 5_000)
    })[:KEY_COUNT]
    # Keys that end in 0xFF bytes stress the prefix end computation.
    keys += [b"/app3/svc7\xff", b"/app3/svc7\xff\xff/x", b"\xff\xff"]
    state = MVCC()
    shuffled = keys[:]
    generator.shuffle(shuffled)
    for start in range(0, len(shuffled), BATCH):
        state.txn(Txn(success=tuple(Put(key, b"v") for key in shuffled[start:start + BATCH])))
    assert state.statistics()["live_keys"] == len(keys)

    prefixes = [b"", b"/", b"/app3/", b"/app3/svc7", b"/app3/svc7\xff", b"/app19/svc49/", b"\xff", b"/nothing/"]
    prefixes += [key[: generator.randrange(1, len(key))] for key in generator.sample(keys, 40)]
    for prefix in prefixes:
        expected = [key for key in keys if key.startswith(prefix)]
        response = state.range(RangeRequest(prefix or b"\x00", prefix_end(prefix)))
        got = [kv.key for kv in response.kvs]
        if prefix:
            assert sorted(expected) == got, prefix
        assert response.count == len(got)
        counted = state.range(RangeRequest(prefix or b"\x00", prefix_end(prefix), count_only=True))
        assert counted.count == response.count
        limited = state.range(RangeRequest(prefix or b"\x00", prefix_end(prefix), limit=5))
        assert [kv.key for kv in limited.kvs] == got[:5]
        assert limited.more == (len(got) > 5)
