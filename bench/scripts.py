"""Speech-like `tones` session scripts: turns of 2-5 words, breaths and hesitations inside turns, pauses between.

The `tones` engine transcribes them exactly, so every session has a known final transcript.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipeline.emulator.engines.tones import script_text
from tests.support.scripts import MORE_WORDS as WORDS

TURN_PAUSES_MS = (1000, 1300, 1600, 2000)  # past the emulator's end-of-turn (≈ 805 ms of silence)
INNER_PAUSE_MS = 250  # a breath inside a turn: no end of turn
HESITATION_MS = 600  # past the eager end (≈ 458 ms), short of the end: eager_end then resume
LEAD_MS = 200  # synthesize()'s default leading silence
Script = list[str | int]


def _utterance_ms(text: str) -> int:
    """Duration of one utterance in the tones codec: 40 ms per symbol, 80 ms between words."""
    words = text.split()
    return sum(len(w) for w in words) * 40 + 80 * (len(words) - 1)


def make_script(rng: random.Random, seconds: float) -> Script:
    """A conversation-like script of about ``seconds``: turns of 1-3 utterances separated by pauses."""
    target_ms = seconds * 1000.0
    script: Script = []
    t = float(LEAD_MS)
    while True:
        utterances = rng.choice((1, 1, 2, 2, 3))
        for u in range(utterances):
            text = " ".join(rng.sample(WORDS, rng.randint(2, 5)))
            if u == 0:
                text = text.capitalize()
            if u == utterances - 1:
                text += rng.choice(".?!")
            if u:
                pause = HESITATION_MS if rng.random() < 0.3 else INNER_PAUSE_MS
                script.append(pause)
                t += pause
            script.append(text)
            t += _utterance_ms(text)
        pause = rng.choice(TURN_PAUSES_MS)
        if t + pause + 1500 > target_ms:  # no room for another turn: end on a pause
            script.append(max(int(target_ms - t), 1000))
            return script
        script.append(pause)
        t += pause


@dataclass(frozen=True)
class SessionSpec:
    session_id: str
    script: Script

    @property
    def text(self) -> str:
        return script_text(self.script)


def make_sessions(level: int, seconds: float, seed: int, tag: str) -> list[SessionSpec]:
    """The same scripts for a level in every run with the same seed (ids differ by ``tag``)."""
    rng = random.Random(f"{seed}-{level}")
    return [SessionSpec(f"bench-{tag}-{i:04d}", make_script(rng, seconds)) for i in range(level)]
