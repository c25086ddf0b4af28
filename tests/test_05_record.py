"""Stage 05's record layer, session API and state codec on their own.

05-ssl/record_test.c drives the worker's side of a TLS 1.3 session with a
second session as its client (the two directions swapped), and forges what
no real client sends: records pipelined behind one still being handed out,
floods of KeyUpdates and empty records, a TLSInnerPlaintext one byte over
2^14 + 1, a state message with more pending plaintext than a worker buffers,
an alert due while a sealed record is half sent.
It also looks in /proc/self/smaps for the MADV_DONTDUMP flag on the pages
that hold the keys.
"""

import pytest

from conftest import run

PROG = "05-ssl/record_test"
CASES = [
    "buffered_pipelined", "buffered_partial", "buffered_key_update",
    "flood_key_updates", "flood_under_cap", "flood_empty_records",
    "inner_overflow", "state_pending_bound", "alert_behind_queue", "keys_not_dumped",
]


def test_record_unit_cases_all_listed():
    assert run(PROG, "--list").lines == CASES


@pytest.mark.parametrize("case", CASES)
def test_record_unit(case):
    assert run(PROG, case).lines == [f"ok {case}"]
