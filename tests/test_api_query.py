"""api/common.py reads ?index= and ?wait= from a query parsed once a request, without urllib's
parser for a plain query: the same values starlette's `query_params` gives, escapes included,
and the same errors for bad ones."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from yurt.api.common import query_index, wait_seconds
from yurt.errors import InvalidInput


def _request(query: bytes) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/v1/jobs", "query_string": query, "headers": []})


@pytest.mark.parametrize("query", [b"index=5&wait=30s", b"index=5&index=7&wait=1m", b"a&b=&index=3&wait=",
                                   b"", b"wait=1m&&index=2", b"index=%34%32&wait=2s", b"index=9&wait=1+s",
                                   b"wait=1.5&index=0"])
def test_index_and_wait_are_starlettes(query):
    ours, theirs = _request(query), _request(query)
    index_raw = theirs.query_params.get("index", "0") or "0"
    assert query_index(ours) == max(0, int(index_raw))
    wait = theirs.query_params.get("wait")
    try:
        expected = wait_seconds(_request(b"wait=" + wait.encode())) if wait is not None else None
    except InvalidInput:
        expected = "invalid"
    try:
        got = wait_seconds(ours) if wait is not None else None
    except InvalidInput:
        got = "invalid"
    assert got == expected


def test_escapes_are_decoded_and_bad_values_are_refused():
    assert query_index(_request(b"index=%34%32")) == 42
    with pytest.raises(InvalidInput, match='invalid index "x"'):
        query_index(_request(b"index=x"))
    with pytest.raises(InvalidInput, match='invalid wait "soon"'):
        wait_seconds(_request(b"wait=soon"))
    assert wait_seconds(_request(b"index=1&wait=2s")) == 2.0
