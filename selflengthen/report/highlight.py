"""What the Extender put into an answer, found by comparing the extended text with the initial one.

The Extender rewrites the first part of the answer longer (stage 1) and then continues the whole
text from that expansion (stage 2), so the extended text is the initial answer's first part with
words inserted, followed by new text. Where stage 2 began is recorded by the extend step
(`continued_at`, in its rollouts); before it, a word-level alignment (difflib) finds the initial
words that survive (runs of at least `ANCHOR_WORDS` words) and the rest is stage 1's expansion.
For rows written before `continued_at` was recorded, everything after the last surviving run is
taken as stage 2's continuation.
"""

from __future__ import annotations

import difflib
import re

#: Segment kinds: words of the initial answer, stage 1's insertions, stage 2's continuation.
KEPT, EXPANDED, CONTINUED = "kept", "expanded", "continued"
#: The shortest run of the initial answer's words that counts as kept text.
ANCHOR_WORDS = 3
_TOKENS = re.compile(r"\S+\s*|\s+")


def _tokens(text: str) -> list[str]:
    """Words with the whitespace after them (joined, they give `text` back)."""
    return _TOKENS.findall(text)


def extension_segments(initial: str, extended: str, continued_at: int | None = None) -> list[tuple[str, str]]:
    """`extended` cut into consecutive (kind, text) segments whose texts join to `extended`."""
    if continued_at is not None and 0 <= continued_at <= len(extended):
        head, tail = extended[:continued_at], extended[continued_at:]
        segments = [(kind, text) for kind, text in extension_segments(initial, head) if text]
        segments = [(EXPANDED if kind == CONTINUED else kind, text) for kind, text in segments]
        return segments + ([(CONTINUED, tail)] if tail else [])
    before, after = _tokens(initial), _tokens(extended)
    matcher = difflib.SequenceMatcher(
        None, [token.strip() for token in before], [token.strip() for token in after], autojunk=False
    )
    kept = [block for block in matcher.get_matching_blocks() if block.size >= ANCHOR_WORDS]
    end_of_kept = kept[-1].b + kept[-1].size if kept else 0
    kinds = [EXPANDED if index < end_of_kept else CONTINUED for index in range(len(after))]
    for block in kept:
        kinds[block.b : block.b + block.size] = [KEPT] * block.size
    segments: list[tuple[str, str]] = []
    for kind, token in zip(kinds, after, strict=True):
        if segments and segments[-1][0] == kind:
            segments[-1] = (kind, segments[-1][1] + token)
        else:
            segments.append((kind, token))
    return segments
