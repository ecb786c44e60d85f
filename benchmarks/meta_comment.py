"""MetaCommentFilter on text it was not written for: the built-in phrases against the paper's
word list (the baseline), measured in the same run.

- **False drops on human text**: documents collected from this machine (Debian's licence texts
  and package changelogs, Python's reference pages from `pydoc_data`, GnuPG's Chinese and
  Japanese help, Vim's Japanese tutor, the Chinese and Japanese message catalogues of the
  installed programs), cut into documents of a few paragraphs. None of them comments on itself,
  so every drop is a false one. Target: ≤ 1% for the built-in phrases.
- **Recall on what models wrote**: `tests/data/meta_comment_lines.jsonl`, the head and tail
  lines of our runs' answers that either rule flags or that look like a comment, labelled by
  hand (`meta`: whether the line comments on the answer itself). Target: the phrases catch
  every meta-comment the word list catches there.

    python benchmarks/meta_comment.py [--show 20]
"""

from __future__ import annotations

import argparse
import gettext
import gzip
import json
import pydoc_data.topics
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document

from selflengthen.filters import DEFAULT_META_WORDS, MetaCommentFilter

LABELLED = Path(__file__).resolve().parents[1] / "tests" / "data" / "meta_comment_lines.jsonl"
PARAGRAPHS_PER_DOCUMENT = 6
CHUNKS_PER_FILE = 4
MESSAGES_PER_DOCUMENT = 12


def paragraph_documents(text: str) -> Iterator[str]:
    paragraphs = [part.strip("\n") for part in re.split(r"\n\s*\n", text) if part.strip()]
    for first in range(0, len(paragraphs), PARAGRAPHS_PER_DOCUMENT):
        yield "\n\n".join(paragraphs[first : first + PARAGRAPHS_PER_DOCUMENT])


def read(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.read()


def human_corpus() -> dict[str, list[str]]:
    corpus: dict[str, list[str]] = {}
    licences = sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file())
    corpus["licences"] = [doc for path in licences for doc in paragraph_documents(read(path))]
    changelogs = sorted(Path("/usr/share/doc").glob("*/changelog*.gz"))
    corpus["changelogs"] = [
        doc for path in changelogs for doc in list(paragraph_documents(read(path)))[:CHUNKS_PER_FILE]
    ]
    corpus["python reference"] = [text for _, text in sorted(pydoc_data.topics.topics.items())]
    cjk: list[str] = []
    for help_file in sorted(Path("/usr/share/gnupg").glob("help.*.txt")):
        if help_file.name.split(".")[1] in ("zh_CN", "zh_TW", "ja"):
            entries = re.split(r"^\.[\w.]*\n", read(help_file), flags=re.MULTILINE)
            cjk += [entry.strip() for entry in entries[1:] if entry.strip()]
    tutor = Path("/usr/share/vim/vim90/tutor/tutor.ja.utf-8")
    if tutor.exists():
        cjk += list(paragraph_documents(read(tutor)))
    corpus["gnupg/vim (zh, ja)"] = cjk
    messages: list[str] = []
    for language in ("zh_CN", "zh_TW", "ja"):
        for catalogue in sorted(Path(f"/usr/share/locale/{language}/LC_MESSAGES").glob("*.mo")):
            try:
                with open(catalogue, "rb") as handle:
                    translated = [
                        str(text) for key, text in gettext.GNUTranslations(handle)._catalog.items() if key
                    ]
            except (OSError, UnicodeDecodeError):
                continue
            for first in range(0, len(translated), MESSAGES_PER_DOCUMENT):
                messages.append("\n".join(translated[first : first + MESSAGES_PER_DOCUMENT]))
    corpus["message catalogues (zh, ja)"] = messages
    return {name: docs for name, docs in corpus.items() if docs}


def dropped(check: MetaCommentFilter, text: str) -> str | None:
    verdict = check.filter(Document(text=text, id="d"))
    return None if verdict is True else verdict[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--show", type=int, default=10, help="how many false drops of each rule to print")
    args = parser.parse_args()
    rules = {
        "word list (paper)": MetaCommentFilter(words=DEFAULT_META_WORDS),
        "phrases (default)": MetaCommentFilter(),
    }

    corpus = human_corpus()
    total = sum(len(docs) for docs in corpus.values())
    print(f"False drops on {total} human-written documents from this machine:")
    print(f"| source | documents | {' | '.join(rules)} |\n|---|---|{'---|' * len(rules)}")
    examples: dict[str, Counter[str]] = {name: Counter() for name in rules}
    totals = Counter[str]()
    for source, docs in corpus.items():
        cells = []
        for name, check in rules.items():
            reasons = [reason for doc in docs if (reason := dropped(check, doc)) is not None]
            examples[name].update(reasons)
            totals[name] += len(reasons)
            cells.append(f"{len(reasons)} ({len(reasons) / len(docs):.1%})")
        print(f"| {source} | {len(docs)} | {' | '.join(cells)} |")
    print(f"| all | {total} | {' | '.join(f'{totals[n]} ({totals[n] / total:.2%})' for n in rules)} |")
    baseline, ours = (totals[name] for name in rules)
    print(f"phrases / word list false drops: {ours / baseline if baseline else float('nan'):.3f}x")
    for name in rules:
        print(f"most frequent reasons, {name}: {examples[name].most_common(args.show)}")

    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    meta = [row["line"] for row in rows if row["meta"]]
    other = [row["line"] for row in rows if not row["meta"]]
    print(f"\nModel-written lines ({LABELLED.name}): {len(meta)} meta-comments, {len(other)} other lines")
    caught: dict[str, set[str]] = {}
    for name, check in rules.items():
        caught[name] = {line for line in meta if check.meta_word(line) is not None}
        wrong = sum(check.meta_word(line) is not None for line in other)
        print(f"{name}: recall {len(caught[name])}/{len(meta)} ({len(caught[name]) / len(meta):.1%}), "
              f"flags {wrong}/{len(other)} other lines")  # fmt: skip
    missed = caught["word list (paper)"] - caught["phrases (default)"]
    print(f"meta-comments the word list catches and the phrases miss: {len(missed)}")
    for line in sorted(missed):
        print(f"  {line[:160]}")


if __name__ == "__main__":
    main()
