"""A record whose header name is not UTF-8 no longer stops a consumer (real broker).

Each case writes genuine records to the broker (tests/support/poison.py), then reads them in a
subprocess (tests/support/poison_check.py) so that aiokafka's C extension or its pure-Python decoder
can be chosen per case: plain ``getmany`` raises at the bad record on every retry (the old behaviour),
while :func:`pipeline.kafka.fetch.fetch` returns every good record exactly once, in order, and reports
each bad record at its exact offset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support.kafka import REPO_ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

DECODERS = {"c_extension": "", "pure_python": "1"}
EXPECTED_ERROR = {"c_extension": "UnicodeDecodeError", "pure_python": "CorruptRecordException"}

# Batches separated by "|": g = good record, P = header name not UTF-8; "+N" = N good records on a
# second partition.
LAYOUTS = {
    "middle": "g|g|g|P|g|g",
    "first_record": "P|g|g",
    "last_record": "g|g|P",
    "two_in_a_row": "g|P|P|g",
    "inside_one_batch": "g|gPPg|g",
    "other_partition_not_lost": "g|g|gPg|g+30",
}


def run_check(bootstrap: str, layout: str, decoder: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("AIOKAFKA_NO_EXTENSIONS", None)
    if DECODERS[decoder]:
        env["AIOKAFKA_NO_EXTENSIONS"] = DECODERS[decoder]
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.poison_check", bootstrap, layout],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["no_extensions"] is bool(DECODERS[decoder])
    return result


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_bad_header_name(kafka_bootstrap: str, case: str, decoder: str) -> None:
    result = run_check(kafka_bootstrap, LAYOUTS[case], decoder)
    good, poison = result["written"]["good"], result["written"]["poison"]
    assert poison, "the layout wrote no bad record"

    # Old behaviour: getmany raises, again on every retry, and never gets past the bad record.
    plain = result["plain"]
    assert plain["errors"] == [EXPECTED_ERROR[decoder]] * 2
    assert all(offset < poison[0] for offset in plain["seen"][0])

    # fetch(): every good record once, in order; every bad one reported at its offset.
    fetched = result["fetch"]
    assert fetched["seen"] == good
    assert fetched["values"] == [f"v{offset}" for offset in good[0]]
    assert [(c["partition"], c["offset"]) for c in fetched["corrupt"]] == [(0, p) for p in poison]
    for corrupt in fetched["corrupt"]:
        assert "not UTF-8" in corrupt["error"]
        assert corrupt["raw"]
        assert corrupt["value"] == f"v{corrupt['offset']}"
