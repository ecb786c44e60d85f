"""Early stop in the extend step: how stage 1's text is cut into parts and which of them stage 2
starts from (`split_parts`, `stage_two_start`), the part of an unfinished stage-1 text that
stage 2 starts from whatever follows (`certainly_kept`), the watch of stage 1 over that part
(`StageOneWatch`), and the watch of stage 2 over the text it is judged on (`CombinedWatch`).
Both follow the step's checks (`ResponseChecks`): a filter with a prefix watch stops a request,
others judge at the end."""

from __future__ import annotations

import re

from selflengthen.builders.checks import ResponseChecks, rejection
from selflengthen.filters.meta_comment import MetaCommentFilter
from selflengthen.filters.prefix import HeadMetaWatch, at_word_end

_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def split_parts(text: str) -> tuple[list[str], str]:
    """Paragraphs (split at blank lines) and their separator; lines when paragraphs give <= 2."""
    paragraphs = [part.strip() for part in _BLANK_LINES.split(text.strip()) if part.strip()]
    if len(paragraphs) > 2:
        return paragraphs, "\n\n"
    return [line.strip() for line in text.strip().splitlines() if line.strip()], "\n"


def stage_two_start(parts: list[str], separator: str) -> str:
    """What stage 2 continues from: the first two-thirds (at least one) of stage 1's parts."""
    return separator.join(parts[: max(1, round(len(parts) * 2 / 3))])


def certainly_kept(prefix: str) -> str:
    """The part of an unfinished stage-1 text that is in stage 2's start whatever follows.

    Only lines that a line break ends count (the rest may still grow). With three or more
    paragraphs the text is split into paragraphs for good, and the first two-thirds of those
    seen so far are kept (two-thirds of more paragraphs is not fewer; the last one seen may
    still grow, and two-thirds of three or more never reaches it). With one or two, the
    finished text is split either into three or more paragraphs, of which at least the first
    two are kept (they hold every line seen so far), or into lines, of which the first
    two-thirds (at least one) are kept: so the first two-thirds of the lines seen so far.
    """
    complete = prefix[: max(prefix.rfind("\n"), prefix.rfind("\r")) + 1]
    return stage_two_start(*split_parts(complete))


class StageOneWatch:
    """Stage 1's text is not judged itself, but the first two-thirds of its parts become the
    start of the text stage 2 is judged on. The part kept whatever follows (`certainly_kept`)
    is fed to the checks' watch as it grows; its rejection there is certain for stage 2. That
    part changes only at a line break; when it is not an extension of what was fed (the text
    turned from lines into paragraphs), a fresh watch reads it from its start. Whitespace follows
    it in the judged text, so its last word is complete there (`at_word_end`). A meta-comment
    filter's head lines are judged on the part as soon as it holds them, its last line too:
    stage 2 ends that line or continues it, which keeps the meta-comment."""

    def __init__(self, checks: ResponseChecks) -> None:
        self._checks = checks
        self._watch = checks.watch()
        self._heads = [check for check in checks.filters if isinstance(check, MetaCommentFilter)]
        self._head_open = any(check.head_lines > 0 for check in self._heads)
        self._chunks: list[str] = []
        self._fed = ""
        self.reason: str | None = None

    def feed(self, chunk: str) -> str | None:
        if self.reason is None:
            self._chunks.append(chunk)
            if "\n" in chunk or "\r" in chunk:
                self.reason = self._check(certainly_kept("".join(self._chunks)))
        return self.reason

    def _check(self, kept: str) -> str | None:
        if self._head_open:
            lines = [line for line in kept.splitlines() if line.strip()]
            for check in self._heads:
                if any(check.meta_word(line) is not None for line in lines[: check.head_lines]):
                    return rejection(check, HeadMetaWatch.reason)
            self._head_open = any(len(lines) < check.head_lines for check in self._heads)
        if kept.startswith(self._fed):
            new = kept[len(self._fed) :]
        else:
            self._watch, new = self._checks.watch(), kept
        self._fed = kept
        # In the text stage 2 is judged on, whitespace follows this part (the next part's
        # separator, or the continuation: joined by a separator unless it begins with whitespace).
        return (self._watch.feed(new) if new else None) or at_word_end(self._watch)


class CombinedWatch:
    """The checks' watch over the text stage 2 is judged on (`combine`): the start, then the
    continuation as it streams. `reason_before` is set when the start alone already fails."""

    def __init__(self, checks: ResponseChecks, start: str, separator: str) -> None:
        self._inner = checks.watch()
        self._separator = separator
        self._begun = False
        self.reason_before = self._inner.feed(start)

    def feed(self, chunk: str) -> str | None:
        if not self._begun and chunk:
            self._begun = True
            chunk = ("" if chunk[:1].isspace() else self._separator) + chunk
        return self._inner.feed(chunk)
