"""The bench's command line: which peers a level runs."""

from __future__ import annotations

import pytest

from bench.compare import PEERS, parse_args, peer_kinds


@pytest.mark.parametrize(
    ("argv", "kinds"),
    [
        ([], ["worker", "naive", "floor"]),
        (["--no-floor"], ["worker", "naive"]),
        (["--c-floor"], ["worker", "naive", "floor", "floor-c"]),
        (["--worker-only"], ["worker"]),
        (["--worker-only", "--c-floor"], ["worker", "floor-c"]),
    ],
)
def test_a_level_runs_the_worker_first_then_the_peers_asked_for(argv: list[str], kinds: list[str]) -> None:
    assert peer_kinds(parse_args(argv)) == kinds
    assert set(kinds) <= PEERS.keys()
