"""Tests of :mod:`pipeline.pacing`: the realtime pacer, driven by an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pipeline.pacing import Frame, Pacer

BPM = 2.0  # bytes per ms: small frames keep the tests fast
FRAME_MS = 100.0
FB = 200  # one 100 ms frame
LEAD_MS = 300.0
BUDGET_MS = 400.0
SILENCE = b"\x00" * FB
EPS_MS = 1e-3


def make(
    *,
    max_lead_ms: float = LEAD_MS,
    silence_budget_ms: float = BUDGET_MS,
) -> Pacer:
    return Pacer(
        frame_bytes=FB,
        frame_ms=FRAME_MS,
        max_lead_ms=max_lead_ms,
        silence_budget_ms=silence_budget_ms,
        silence_frame=SILENCE,
        bytes_per_ms=BPM,
    )


def audio(n: int, start: int = 0) -> bytes:
    """``n`` bytes of recognizable, never-all-zero audio."""
    return bytes(1 + (start + i) % 251 for i in range(n))


def audio_of(frames: list[Frame]) -> bytes:
    return b"".join(f.data for f in frames if not f.silence)


def drain_at_wakeups(p: Pacer, now: float, *, input_live: bool, limit: int = 100_000) -> list[tuple[float, Frame]]:
    """Poll at each time next_wakeup gives until it gives None; return (send time, frame) pairs."""
    sent: list[tuple[float, Frame]] = []
    for _ in range(limit):
        wake = p.next_wakeup(now)
        if wake is None:
            return sent
        assert wake >= now
        now = wake
        sent.extend((now, f) for f in p.poll(now, input_live=input_live))
    raise AssertionError("pacer never settled")


# -- construction --------------------------------------------------------------------------------------


def test_defaults() -> None:
    p = Pacer(frame_bytes=3200, silence_frame=bytes(3200), bytes_per_ms=32.0)
    p.push(audio(3200 * 10))
    assert len(p.poll(0.0, input_live=True)) == 4  # frames due at 0, 0.1, 0.2, 0.3 (300 ms lead)
    p.poll(0.0, input_live=True)
    assert p.next_wakeup(0.0) == pytest.approx(0.1)


@pytest.mark.parametrize("frame_ms", [49.9, 201.0, 0.0, -100.0])
def test_frame_ms_out_of_range(frame_ms: float) -> None:
    with pytest.raises(ValueError, match="frame_ms"):
        n = max(1, int(frame_ms * BPM))
        Pacer(frame_bytes=n, frame_ms=frame_ms, silence_frame=bytes(n), bytes_per_ms=BPM)


@pytest.mark.parametrize("frame_ms", [50.0, 200.0])
def test_frame_ms_bounds_inclusive(frame_ms: float) -> None:
    n = int(frame_ms * BPM)
    Pacer(frame_bytes=n, frame_ms=frame_ms, silence_frame=bytes(n), bytes_per_ms=BPM)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frame_bytes": 0, "silence_frame": b""}, "frame_bytes"),
        ({"bytes_per_ms": 0.0}, "bytes_per_ms"),
        ({"frame_bytes": 300, "silence_frame": bytes(300)}, "frame_bytes"),  # 150 ms, not 100
        ({"max_lead_ms": -1.0}, "max_lead_ms"),
        ({"silence_budget_ms": -1.0}, "silence_budget_ms"),
        ({"silence_frame": bytes(FB - 1)}, "silence_frame"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "frame_bytes": FB,
        "frame_ms": FRAME_MS,
        "silence_frame": SILENCE,
        "bytes_per_ms": BPM,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Pacer(**args)  # type: ignore[arg-type]


def test_frame_bytes_may_round_to_whole_samples() -> None:
    # 22050 Hz s16le, 50 ms = 1102.5 samples: 1102 samples (2204 bytes) is accepted.
    Pacer(frame_bytes=2204, frame_ms=50.0, silence_frame=bytes(2204), bytes_per_ms=44.1)


# -- nothing to do -------------------------------------------------------------------------------------


def test_idle_pacer() -> None:
    p = make()
    assert p.poll(0.0, input_live=True) == []
    assert p.next_wakeup(0.0) is None
    assert p.lead_ms(5.0) == 0.0
    assert p.sent_audio_ms == 0.0
    assert not p.drained
    p.push(b"")
    assert p.queued_bytes == 0


def test_no_silence_before_the_first_send() -> None:
    p = make()
    p.push(audio(FB // 2))  # a partial frame only
    for t in (0.0, 1.0, 10.0):
        assert p.poll(t, input_live=True) == []
    assert p.next_wakeup(10.0) is None
    assert p.silence_ms_sent == 0.0


# -- steady input --------------------------------------------------------------------------------------


def test_steady_realtime_input_sends_each_frame_on_arrival() -> None:
    p = make()
    data = audio(FB * 50)
    sent: list[Frame] = []
    for k in range(50):
        now = k * 0.1
        p.push(data[k * FB : (k + 1) * FB])
        frames = p.poll(now, input_live=True)
        assert frames == [Frame(data[k * FB : (k + 1) * FB], silence=False)]
        sent += frames
        assert p.lead_ms(now) == pytest.approx(FRAME_MS)
        assert p.queued_bytes == 0
    assert audio_of(sent) == data
    assert p.sent_audio_ms == pytest.approx(5000.0)
    assert p.silence_ms_sent == 0.0


def test_jitter_within_budget_is_absorbed_without_silence() -> None:
    p = make()
    data = audio(FB * 40)
    sent: list[Frame] = []
    now = 0.0
    for k in range(40):
        # chunk k is spoken at k*0.1 s; every fifth one (and so those queued behind it) is 350 ms late
        now = max(now, k * 0.1 + (0.35 if k % 5 == 0 else 0.0))
        p.push(data[k * FB : (k + 1) * FB])
        sent += p.poll(now, input_live=True)
        sent += p.poll(now + 0.01, input_live=True)  # starved, but within the budget
        now += 0.01
    sent += [f for _, f in drain_at_wakeups(p, now, input_live=False)]
    assert all(not f.silence for f in sent)
    assert audio_of(sent) == data


# -- backlog -------------------------------------------------------------------------------------------


def test_sixty_second_backlog_is_released_at_realtime_plus_lead() -> None:
    p = make()
    n_frames = 600
    data = audio(FB * n_frames)
    p.push(data)
    assert p.queued_bytes == len(data)
    sent = drain_at_wakeups(p, 0.0, input_live=False)
    assert [f for _, f in sent if f.silence] == []
    assert audio_of([f for _, f in sent]) == data
    times = [t for t, _ in sent]
    for k, t in enumerate(times):
        assert t == pytest.approx(max(0.0, k * 0.1 - 0.3), abs=1e-6), k
    assert times[-1] == pytest.approx(59.6, abs=1e-6)
    assert p.queued_bytes == 0
    assert p.sent_audio_ms == pytest.approx(60_000.0)


def test_backlog_polled_often_never_exceeds_realtime_plus_lead() -> None:
    p = make()
    p.push(audio(FB * 600))
    sent_ms = 0.0
    per_poll_max = 0
    for i in range(0, 61_000, 7):  # poll every 7 ms
        now = i / 1000
        frames = p.poll(now, input_live=True)
        per_poll_max = max(per_poll_max, len(frames))
        sent_ms += sum(len(f.data) for f in frames) / BPM
        assert sent_ms <= now * 1000 + LEAD_MS + FRAME_MS + EPS_MS
        assert p.lead_ms(now) <= LEAD_MS + FRAME_MS + EPS_MS
    # drained at 59.6 s with the clock at 60 s; then, live and starved, silence from 60.4 s on
    assert sent_ms - p.silence_ms_sent == pytest.approx(60_000.0)
    assert p.silence_ms_sent == pytest.approx(900.0)
    assert per_poll_max == 4  # only the very first poll sends more than one frame


def test_backlog_pushed_in_many_pieces_at_once_is_still_paced() -> None:
    p = make()
    data = audio(FB * 100)
    for i in range(0, len(data), 333):
        p.push(data[i : i + 333])
    assert len(p.poll(0.0, input_live=True)) == 4
    assert p.poll(0.05, input_live=True) == []
    assert len(p.poll(0.1, input_live=True)) == 1
    assert p.next_wakeup(0.1) == pytest.approx(0.2)


# -- re-framing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 199, 200, 201, 399, 1000, 4099])
def test_arbitrary_chunk_sizes_are_reframed_exactly(chunk: int) -> None:
    p = make()
    data = audio(FB * 20 + 123)
    for i in range(0, len(data), chunk):
        p.push(data[i : i + chunk])
    assert p.queued_bytes == len(data)
    sent = [f for _, f in drain_at_wakeups(p, 0.0, input_live=False)]
    assert all(len(f.data) == FB for f in sent)
    assert audio_of(sent) == data[: FB * 20]
    assert p.queued_bytes == 123  # the partial frame is held
    assert not p.drained
    p.finish()
    last = [f for _, f in drain_at_wakeups(p, 100.0, input_live=False)]
    assert last == [Frame(data[FB * 20 :], silence=False)]
    assert p.drained
    assert p.queued_bytes == 0


# -- silence fill --------------------------------------------------------------------------------------


def started() -> Pacer:
    """A pacer that sent one frame at t=0, so its clock stands at 0.1 s."""
    p = make()
    p.push(audio(FB))
    assert len(p.poll(0.0, input_live=True)) == 1
    return p


def test_silence_only_after_the_budget_when_live_and_starved() -> None:
    p = started()
    assert p.next_wakeup(0.0) == pytest.approx(0.5)  # clock 0.1 + budget 0.4
    for t in (0.1, 0.2, 0.3, 0.49):
        assert p.poll(t, input_live=True) == []
    frames = p.poll(0.5, input_live=True)
    assert frames == [Frame(SILENCE, silence=True)] * 4  # fills 0.1 → 0.5: up to now, not ahead
    assert p.lead_ms(0.5) == pytest.approx(0.0, abs=EPS_MS)
    assert p.silence_ms_sent == pytest.approx(400.0)
    assert p.sent_audio_ms == pytest.approx(500.0)


def test_silence_keeps_pace_with_the_clock_once_filling() -> None:
    p = started()
    p.poll(0.5, input_live=True)
    assert p.next_wakeup(0.5) == pytest.approx(0.6)
    assert p.poll(0.55, input_live=True) == []
    assert p.poll(0.6, input_live=True) == [Frame(SILENCE, silence=True)]
    assert len(p.poll(0.85, input_live=True)) == 2
    assert p.lead_ms(0.85) <= 0.0
    assert p.silence_ms_sent == pytest.approx(700.0)


def test_audio_after_silence_goes_out_and_stops_the_fill() -> None:
    p = started()
    p.poll(0.6, input_live=True)  # clock 0.6
    p.push(audio(FB * 10, 7))
    frames = p.poll(0.65, input_live=True)
    assert [f.silence for f in frames] == [False] * 4  # clock 0.6 + lead 0.3 → frames due 0.6 … 0.9
    assert p.silence_ms_sent == pytest.approx(400.0)  # the poll came 100 ms late: at most the budget
    now = 0.65
    while p.queued_bytes:
        now = p.next_wakeup(now) or now
        frames += p.poll(now, input_live=True)
    assert audio_of(frames) == audio(FB * 10, 7)
    assert not any(f.silence for f in frames)
    # starved again: a fresh budget before filling
    assert now == pytest.approx(1.2)  # the last frame was due 1.5
    assert p.next_wakeup(now) == pytest.approx(1.6 + 0.4)


def test_a_waiting_partial_frame_is_sent_before_the_silence_fill() -> None:
    p = started()
    p.push(audio(FB // 2))
    frames = p.poll(0.5, input_live=True)
    assert frames[0] == Frame(audio(FB // 2), silence=False)
    assert len(frames) == 4 and all(f.silence for f in frames[1:])
    assert p.queued_bytes == 0


@pytest.mark.parametrize("t", [0.5, 1.0, 60.0, 3600.0])
def test_never_silence_while_input_is_not_live(t: float) -> None:
    p = started()
    assert p.poll(t, input_live=False) == []
    assert p.next_wakeup(t) is None
    assert p.silence_ms_sent == 0.0


def test_not_live_stops_an_ongoing_fill() -> None:
    p = started()
    p.poll(0.6, input_live=True)
    assert p.poll(0.9, input_live=False) == []
    assert p.next_wakeup(0.9) is None
    assert p.silence_ms_sent == pytest.approx(400.0)


def test_live_again_after_a_stall_waits_a_fresh_budget_and_never_bursts_silence() -> None:
    p = started()
    assert p.poll(0.2, input_live=False) == []
    assert p.poll(30.0, input_live=True) == []  # rebased: the 30 s stall is not filled
    assert p.next_wakeup(30.0) == pytest.approx(30.4)
    frames = p.poll(30.4, input_live=True)
    assert frames == [Frame(SILENCE, silence=True)] * 4
    assert p.silence_ms_sent == pytest.approx(400.0)


def test_late_poll_while_live_fills_at_most_the_budget() -> None:
    p = started()
    frames = p.poll(10.0, input_live=True)  # the caller overslept 9.5 s
    assert frames == [Frame(SILENCE, silence=True)] * 4
    assert p.lead_ms(10.0) == pytest.approx(0.0, abs=EPS_MS)


def test_no_silence_after_finish() -> None:
    p = started()
    p.finish()
    assert p.drained
    assert p.poll(5.0, input_live=True) == []
    assert p.next_wakeup(5.0) is None


def test_zero_budget_fills_as_soon_as_the_clock_is_due() -> None:
    p = make(silence_budget_ms=0.0)
    p.push(audio(FB))
    p.poll(0.0, input_live=True)
    assert p.next_wakeup(0.0) == pytest.approx(0.1)
    assert p.poll(0.1, input_live=True) == []  # the next frame is due now, not yet elapsed
    assert p.poll(0.2, input_live=True) == [Frame(SILENCE, silence=True)]


# -- rebase --------------------------------------------------------------------------------------------


def test_rebase_after_a_stall_means_no_catch_up_burst() -> None:
    p = make()
    p.push(audio(FB * 10))
    drain_at_wakeups(p, 0.0, input_live=False)  # 10 frames sent by t=0.6, clock at 1.0
    assert p.poll(2.0, input_live=False) == []  # starved and behind: nothing, no fill
    p.push(audio(FB * 30, 3))  # the worker catches up: 3 s at once at t=5
    frames = p.poll(5.0, input_live=False)
    assert len(frames) == 4  # like a fresh start: frames due 5.0, 5.1, 5.2, 5.3
    assert p.lead_ms(5.0) == pytest.approx(LEAD_MS + FRAME_MS)
    sent = drain_at_wakeups(p, 5.0, input_live=False)
    for k, (t, _) in enumerate(sent, start=4):
        assert t == pytest.approx(5.0 + k * 0.1 - 0.3, abs=1e-6)


def test_rebase_when_the_stall_ends_with_live_audio() -> None:
    p = make()
    p.push(audio(FB))
    p.poll(0.0, input_live=True)
    p.poll(0.3, input_live=False)
    p.push(audio(FB * 10))
    assert len(p.poll(0.45, input_live=True)) == 4  # clock rebased to 0.45 (was 0.1)
    assert p.next_wakeup(0.45) == pytest.approx(0.55)


def test_stall_while_ahead_does_not_move_the_clock() -> None:
    p = make()
    p.push(audio(FB * 4))
    assert len(p.poll(0.0, input_live=True)) == 4  # clock at 0.4
    assert p.poll(0.1, input_live=False) == []
    p.push(audio(FB * 4))
    assert len(p.poll(0.15, input_live=True)) == 1  # due 0.4 on the original clock, sendable from 0.1
    assert p.next_wakeup(0.15) == pytest.approx(0.2)
    assert p.lead_ms(0.15) == pytest.approx(350.0)


def test_live_starvation_within_budget_is_caught_up() -> None:
    p = make()
    p.push(audio(FB))
    p.poll(0.0, input_live=True)  # clock 0.1
    assert p.poll(0.3, input_live=True) == []  # 200 ms behind, within the 400 ms budget
    p.push(audio(FB * 10))
    frames = p.poll(0.45, input_live=True)
    # clock 0.1 may run to 0.45 + 0.3: frames due 0.1 … 0.7 → 7 frames, the 350 ms lost are caught up
    assert len(frames) == 7
    assert p.lead_ms(0.45) == pytest.approx(350.0)


def test_late_poll_with_backlog_catches_up_at_most_the_budget() -> None:
    p = make()
    p.push(audio(FB * 100))
    p.poll(0.0, input_live=True)  # 4 frames, clock 0.4
    frames = p.poll(5.0, input_live=True)  # the caller overslept
    assert len(frames) == 8  # due 4.6 (5.0 - budget) … 5.3 (5.0 + lead)
    assert p.lead_ms(5.0) == pytest.approx(LEAD_MS + FRAME_MS)


# -- finish --------------------------------------------------------------------------------------------


def test_finish_sends_the_partial_frame_as_a_short_final_frame() -> None:
    p = make()
    data = audio(FB * 2 + 50)
    p.push(data)
    assert len(p.poll(0.0, input_live=True)) == 2
    assert p.queued_bytes == 50
    p.finish()
    assert not p.drained
    assert p.next_wakeup(0.0) == pytest.approx(0.0)
    last = p.poll(0.0, input_live=True)
    assert last == [Frame(data[FB * 2 :], silence=False)]
    assert p.drained
    assert p.sent_audio_ms == pytest.approx(225.0)
    assert p.next_wakeup(0.0) is None
    assert p.poll(1.0, input_live=True) == []


def test_finish_drains_a_backlog_still_paced() -> None:
    p = make()
    p.push(audio(FB * 10 + 1))
    p.finish()
    sent = drain_at_wakeups(p, 0.0, input_live=False)
    assert [t for t, _ in sent] == pytest.approx([0, 0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], abs=1e-6)
    assert len(sent[-1][1].data) == 1
    assert p.drained


def test_finish_without_audio_is_drained_at_once() -> None:
    p = make()
    p.finish()
    assert p.drained
    assert p.poll(0.0, input_live=True) == []


def test_finish_is_idempotent_and_push_after_it_fails() -> None:
    p = make()
    p.push(audio(10))
    p.finish()
    p.finish()
    with pytest.raises(RuntimeError):
        p.push(audio(1))
    assert p.poll(0.0, input_live=True) == [Frame(audio(10), silence=False)]
    assert p.drained


# -- properties ----------------------------------------------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("push"), st.integers(0, 2500), st.integers(0, 800)),  # (op, bytes, dt ms)
    st.tuples(st.just("poll"), st.booleans(), st.integers(0, 800)),  # (op, input_live, dt ms)
)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(_op, max_size=80),
    lead=st.sampled_from([0.0, 100.0, 300.0, 550.0]),
    budget=st.sampled_from([0.0, 250.0, 400.0]),
)
def test_property_pacing(ops: list[tuple[str, int | bool, int]], lead: float, budget: float) -> None:
    p = make(max_lead_ms=lead, silence_budget_ms=budget)
    pushed = bytearray()
    sent: list[Frame] = []
    now = 0.0
    t0: float | None = None
    stalled = False
    finished = False

    def check_poll(input_live: bool) -> None:
        nonlocal t0, stalled
        has_frame = p.queued_bytes >= FB or (finished and p.queued_bytes > 0)
        frames = p.poll(now, input_live=input_live)
        if frames and t0 is None:
            t0 = now
        sent.extend(frames)
        got_ms = sum(len(f.data) for f in frames) / BPM
        # (a) audio bytes are the input, in order, so far
        assert bytes(pushed).startswith(audio_of(sent))
        # frames are whole, except a final one after finish, or the held end of the audio that opens a
        # silence fill (live, starved), after which only silence follows in that poll
        assert all(f.data == SILENCE for f in frames if f.silence)
        for i, f in enumerate(frames):
            if len(f.data) != FB:
                assert not f.silence
                if not finished:
                    event("partial frame before silence")
                    assert input_live and not has_frame and all(g.silence for g in frames[i + 1 :])
        # silence only while live, never once finished
        if any(f.silence for f in frames):
            event("silence filled")
            assert input_live and not finished
        # (b) never ahead of realtime by more than the lead (+ the frame being sent)
        if t0 is not None:
            assert p.sent_audio_ms <= (now - t0) * 1000 + lead + FRAME_MS + EPS_MS
        # never a burst: one poll sends at most lead + budget (+ one frame) of audio
        assert got_ms <= lead + budget + FRAME_MS + EPS_MS
        if frames:
            # never behind by more than the budget at a send
            assert p.lead_ms(now) >= -budget - EPS_MS
        # no catch-up at all after a stall of the input
        if stalled and (has_frame or input_live):
            if frames:
                event("sent after a stall")
            assert got_ms <= lead + FRAME_MS + EPS_MS
            stalled = False
        if t0 is not None and not has_frame and not input_live and not finished:
            stalled = True

    for op, arg, dt in ops:
        now += dt / 1000
        if op == "push":
            chunk = audio(int(arg), len(pushed))
            pushed += chunk
            p.push(chunk)
        else:
            check_poll(bool(arg))
        assert p.queued_bytes == len(pushed) - len(audio_of(sent))

    # (c) after finish and enough polls nothing is lost
    p.finish()
    finished = True
    for _ in range(10_000):
        wake = p.next_wakeup(now)
        if wake is None:
            break
        now = wake
        check_poll(False)
    assert p.drained
    assert audio_of(sent) == bytes(pushed)
    assert p.queued_bytes == 0
    assert p.sent_audio_ms == pytest.approx(sum(len(f.data) for f in sent) / BPM)
    assert p.silence_ms_sent == pytest.approx(sum(1 for f in sent if f.silence) * FRAME_MS)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=40))
def test_property_reframing_is_exact(sizes: list[int]) -> None:
    p = make()
    data = b""
    for n in sizes:
        chunk = audio(n, len(data))
        data += chunk
        p.push(chunk)
    p.finish()
    frames = [f for _, f in drain_at_wakeups(p, 0.0, input_live=True)]
    assert b"".join(f.data for f in frames) == data
    assert all(not f.silence for f in frames)
    assert [len(f.data) for f in frames[:-1]] == [FB] * (len(frames) - 1)
    assert 0 < len(frames[-1].data) <= FB


def test_cut_releases_the_partial_frame_without_finishing() -> None:
    pacer = Pacer(frame_bytes=3200, frame_ms=100, silence_frame=bytes(3200), bytes_per_ms=32.0)
    pacer.push(b"\x01" * 4000)
    first = pacer.poll(0.0, input_live=True)
    assert [len(f.data) for f in first] == [3200]
    pacer.cut()
    assert [len(f.data) for f in pacer.poll(0.1, input_live=True)] == [800]
    assert not pacer.drained
    pacer.push(b"\x02" * 3200)  # more audio after a cut is still accepted and framed
    assert [f.data for f in pacer.poll(0.2, input_live=True)] == [b"\x02" * 3200]


def test_a_held_partial_frame_goes_out_before_silence_fill() -> None:
    pacer = Pacer(frame_bytes=3200, frame_ms=100, silence_budget_ms=400, silence_frame=bytes(3200), bytes_per_ms=32.0)
    pacer.push(b"\x01" * 4800)  # one frame and a half: the producer then goes quiet
    assert [f.data for f in pacer.poll(0.0, input_live=True)] == [b"\x01" * 3200]
    assert pacer.poll(0.3, input_live=True) == []  # within the budget the half frame waits for more
    frames = pacer.poll(0.6, input_live=True)
    assert frames[0] == Frame(b"\x01" * 1600, silence=False)
    assert frames[1:] and all(f.silence for f in frames[1:])
    assert pacer.queued_bytes == 0
