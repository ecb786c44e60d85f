import json
from pathlib import Path

import pytest
from datatrove.data import Document
from hypothesis import given
from hypothesis import strategies as st

from selflengthen.filters import (
    DEFAULT_META_WORDS,
    DROP_DETAIL,
    MISSING_TEXT,
    CharacterLoopFilter,
    EndingFilter,
    GrowthFilter,
    LengthFilter,
    MetaCommentFilter,
    RepetitionFilter,
    find_character_loop,
    find_repeated_ngram,
)
from selflengthen.filters.repetition import find_repeated_ngrams
from selflengthen.text import content_tokens
from tests.strategies import loop_texts, repetitive_texts, texts

ENGLISH = " ".join(f"w{i}" for i in range(40))
LABELLED_LINES = Path(__file__).parent / "data" / "meta_comment_lines.jsonl"
CHINESE = "春眠不觉晓处处闻啼鸟夜来风雨声花落知多少床前明月光疑是地上霜举头望明月低头思故乡"


def doc(text: object, **metadata: object) -> Document:
    return Document(text=text, id="d", metadata=dict(metadata))  # type: ignore[arg-type]


def naive_repeat(text: str, ngram: int) -> list[str] | None:
    """The rule, written the obvious way: a set of n-gram tuples."""
    words = content_tokens(text)
    seen: set[tuple[str, ...]] = set()
    for first in range(len(words) - ngram + 1):
        gram = tuple(words[first : first + ngram])
        if gram in seen:
            return list(gram)
        seen.add(gram)
    return None


# --- RepetitionFilter -------------------------------------------------------------------------


def test_repetition_english_ten_words_repeated_is_dropped() -> None:
    phrase = "the quick brown fox jumps over the lazy sleeping dog"  # 10 words
    document = doc(f"{phrase} and then {phrase} again.")
    assert RepetitionFilter().filter(document) == (False, "repeated_ngram")
    assert document.metadata[DROP_DETAIL] == "the quick brown fox jumps over the lazy sleeping dog"


def test_repetition_english_nine_words_repeated_is_kept() -> None:
    phrase = "the quick brown fox jumps over the lazy dog"  # 9 words
    assert RepetitionFilter().filter(doc(f"{phrase}; and {phrase}!")) is True


def test_repetition_counts_english_word_by_word() -> None:
    """The reference merged ASCII runs into one token; a repeated sentence inside one long
    paragraph must still be found."""
    sentence = "It was the best of times, it was the worst of times, it was the age of wisdom."
    assert RepetitionFilter().filter(doc(f"{ENGLISH} {sentence} middle {sentence}"))[0] is False


def test_repetition_chinese_thirteen_characters_repeated_is_dropped() -> None:
    thirteen = CHINESE[:13]
    document = doc(f"{thirteen}，然后{thirteen}。")
    assert RepetitionFilter().filter(document) == (False, "repeated_ngram")
    assert document.metadata[DROP_DETAIL] == thirteen


def test_repetition_chinese_twelve_characters_repeated_is_kept() -> None:
    twelve = CHINESE[:12]
    assert RepetitionFilter().filter(doc(f"{twelve}，然后{twelve}。")) is True


def test_repetition_auto_size_follows_the_majority_script() -> None:
    eleven_cjk = CHINESE[:11]
    # Mostly English: size 10, so an 11-character Chinese repeat counts.
    assert RepetitionFilter().filter(doc(f"{ENGLISH} {eleven_cjk} {eleven_cjk}"))[0] is False
    # Mostly Chinese: size 13, so the same 11 characters repeated pass.
    assert RepetitionFilter().filter(doc(f"{CHINESE}{eleven_cjk}{eleven_cjk}")) is True


def test_repetition_explicit_size_and_overlapping_repeats() -> None:
    assert RepetitionFilter(ngram=3).filter(doc("a b c d a b c"))[0] is False
    assert RepetitionFilter(ngram=4).filter(doc("a b c d a b c")) is True
    # Eleven identical words hold two overlapping 10-grams; ten hold only one.
    assert RepetitionFilter().filter(doc("na " * 11))[0] is False
    assert RepetitionFilter().filter(doc("na " * 10)) is True


def test_repetition_skips_tables_leaders_and_separator_lines() -> None:
    """Words of punctuation or symbols alone never form n-grams: long-form answers contain
    Markdown tables, dot leaders and separator lines, and those must pass."""
    header = "| " + " | ".join(f"column{k}" for k in range(8)) + " |"
    rule = "|" + "|".join([" --- "] * 8) + "|"
    rows = "\n".join("| " + " | ".join(f"r{row}c{k}" for k in range(8)) + " |" for row in range(4))
    table = f"{header}\n{rule}\n{rows}"
    assert RepetitionFilter().filter(doc(f"{ENGLISH}\n\n{table}\n")) is True
    leaders = "Chapter one . . . . . . . . . . . . . . . 3\nChapter two . . . . . . . . . . . . . . . 9"
    assert RepetitionFilter().filter(doc(leaders)) is True
    separators = f"{CHINESE[:20]}\n＝＝＝＝＝＝\n{CHINESE[20:]}\n" + "＝ " * 30
    assert RepetitionFilter().filter(doc(separators)) is True
    # Punctuation between repeated words does not hide the repeat either.
    assert RepetitionFilter(ngram=3).filter(doc("a b c | --- | a , b ; c"))[0] is False


def test_repetition_whitespace_between_words_does_not_matter() -> None:
    assert find_repeated_ngram("alpha beta gamma\nalpha   beta\tgamma", 3) == "alpha   beta\tgamma"


def test_repetition_hash_collisions_are_confirmed_not_trusted() -> None:
    """aXcde and aYcde share length, first, middle and last character: the word hash collides,
    yet n-grams that differ only there are different and must not count as repeats."""
    first = " ".join(["aXcde"] * 5)
    second = " ".join(["aYcde"] * 5)
    assert find_repeated_ngram(f"{first} z {second}", 5) is None
    assert find_repeated_ngram(f"{first} z {first}", 5) == first


def test_repetition_batch_equals_one_by_one_and_never_crosses_documents() -> None:
    batch = ["a b c a b c", "x y z", "x y z", "p q r s t u p q r s t u", "", "中文中文"]
    expected = [find_repeated_ngram(text, 3) for text in batch]
    assert find_repeated_ngrams(batch, 3) == expected == ["a b c", None, None, "p q r", None, None]


@given(repetitive_texts(), st.integers(min_value=1, max_value=6))
def test_repetition_agrees_with_naive_rule(text: str, ngram: int) -> None:
    found = find_repeated_ngram(text, ngram)
    expected = naive_repeat(text, ngram)
    assert (found is None) == (expected is None)
    if found is not None:
        assert content_tokens(found) == expected


@given(st.lists(repetitive_texts(), max_size=8), st.integers(min_value=1, max_value=5))
def test_repetition_batches_agree_with_single_documents(batch: list[str], ngram: int) -> None:
    assert find_repeated_ngrams(batch, ngram) == [find_repeated_ngram(text, ngram) for text in batch]


@given(texts)
def test_repetition_never_crashes(text: str) -> None:
    result = RepetitionFilter().filter(doc(text))
    assert result is True or result[0] is False


@pytest.mark.parametrize("ngram", [0, -3, 2.5, True])
def test_repetition_rejects_bad_ngram(ngram: object) -> None:
    with pytest.raises(ValueError, match="ngram"):
        RepetitionFilter(ngram=ngram)  # type: ignore[arg-type]


def test_repetition_filter_batch_handles_missing_texts() -> None:
    docs = [doc("fine text"), doc(None), doc("x", other="a b a b"), doc("x")]
    results = RepetitionFilter(ngram=2, text_key="other").filter_batch(docs)
    assert results == [
        (False, MISSING_TEXT),
        (False, MISSING_TEXT),
        (False, "repeated_ngram"),
        (False, MISSING_TEXT),
    ]
    assert docs[2].metadata[DROP_DETAIL] == "a b"


# --- EndingFilter -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "A finished sentence.",
        "Really?",
        "Wow!",
        "He said \u201cyes.\u201d",
        "(see above)",
        "```\ncode\n```",
        "**Bold**",
        "结束了。",
        "真的吗？",
        "他说：\u201c好。\u201d",
        "《书名》",
        "「引用」",
        "Wait\u2026",
        "trailing.  \n\n",
    ],
)
def test_ending_accepts_finished_texts(text: str) -> None:
    assert EndingFilter().filter(doc(text)) is True


@pytest.mark.parametrize("text", ["cut off in the mid", "句子没有写完", "a list:", "1. first\n2."[:-1]])
def test_ending_rejects_unfinished_texts(text: str) -> None:
    assert EndingFilter().filter(doc(text)) == (False, "bad_ending")


@pytest.mark.parametrize("text", ["", "   ", "\n\t\u3000"])
def test_ending_rejects_empty_texts(text: str) -> None:
    # U+3000 is whitespace to str.rstrip, so the text is empty.
    assert EndingFilter().filter(doc(text)) == (False, "empty")


def test_ending_custom_terminals_and_bad_parameters() -> None:
    assert EndingFilter(terminals=";").filter(doc("x;")) is True
    assert EndingFilter(terminals=";").filter(doc("x.")) == (False, "bad_ending")
    with pytest.raises(ValueError, match="terminals"):
        EndingFilter(terminals=[])
    with pytest.raises(ValueError, match="terminals"):
        EndingFilter(terminals=["..."])


# --- LengthFilter -----------------------------------------------------------------------------


def test_length_bounds_in_words_and_characters() -> None:
    between = LengthFilter(min_words=3, max_words=5)
    assert between.filter(doc("one two")) == (False, "too_short")
    assert between.filter(doc("one two three")) is True
    assert between.filter(doc("one two three four five six")) == (False, "too_long")
    assert between.filter(doc("一二三四五")) is True  # five CJK characters are five words
    assert between.filter(doc("一二三四五六")) == (False, "too_long")
    assert LengthFilter().filter(doc("")) is True


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"min_words": 5, "max_words": 4}, "min_words"),
        ({"min_words": -1}, "min_words"),
        ({"max_words": -2}, "max_words"),
    ],
)
def test_length_rejects_bad_parameters(kwargs: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        LengthFilter(**kwargs)


# --- MetaCommentFilter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Here is the revised essay:\n\nOnce upon a time.", "here is the revised essay"),
        ("Title\nThis RESPONSE covers the topic.\nBody.", "this response"),
        ("Body one.\nBody two.\nBody three.\nBody four.\nI hope this version helps.", "i hope this version"),
        (
            "Story.\nMore.\nI made some changes to improve the flow of the text.",
            "i made some changes to improve the flow",
        ),
        ("以下是修改后的文章：\n\n正文。", "以下是修改后的"),
        ("正文第一段。\n\n正文第二段。\n\n希望这个回答对你有帮助。", "这个回答"),
    ],
)
def test_meta_comment_rejects_self_talk_at_the_edges(text: str, match: str) -> None:
    document = doc(text)
    assert MetaCommentFilter().filter(document) == (False, "meta_comment")
    assert document.metadata[DROP_DETAIL] == match


@pytest.mark.parametrize(
    "text",
    [
        "GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007",
        "Changed in version 3.11: the response object gained a method.",
        "You may distribute modified versions of the Program.\nSee Paragraph 6.",
        "In response to these concerns, scientists began work on a vaccine.",
        "版本 2.0 发布说明\n修改配置文件后重启服务。",
        "我们需要修改这个段落的格式。",
    ],
)
def test_meta_comment_keeps_human_text_that_merely_uses_the_words(text: str) -> None:
    assert MetaCommentFilter().filter(doc(text)) is True
    assert MetaCommentFilter(words=DEFAULT_META_WORDS).filter(doc(text))[0] is False  # the paper's rule


def test_meta_comment_catches_what_the_word_list_caught_in_model_answers() -> None:
    """Lines our runs' models wrote at the edges of answers, labelled by hand
    (benchmarks/meta_comment.py measures the same on human text)."""
    rows = [json.loads(line) for line in LABELLED_LINES.read_text(encoding="utf-8").splitlines()]
    phrases, word_list = MetaCommentFilter(), MetaCommentFilter(words=DEFAULT_META_WORDS)
    meta = [row["line"] for row in rows if row["meta"]]
    assert meta and all(phrases.meta_word(line) is not None for line in meta if word_list.meta_word(line))
    assert sum(phrases.meta_word(line) is not None for line in meta) > sum(
        word_list.meta_word(line) is not None for line in meta
    )
    assert not [row["line"] for row in rows if not row["meta"] and phrases.meta_word(row["line"])]


def test_meta_comment_keeps_the_middle_and_partial_words() -> None:
    middle = "Intro.\nSecond.\nHere is the revised version, in the middle.\nFour.\nFive.\nSix.\nSeven."
    assert MetaCommentFilter().filter(doc(middle)) is True
    words = MetaCommentFilter(words=DEFAULT_META_WORDS)
    assert words.filter(doc("A conversion of units, responsibly done.")) is True
    assert MetaCommentFilter(head_lines=0, tail_lines=0).filter(doc("Here is the revised version.")) is True


def test_meta_comment_custom_words_patterns_and_bad_parameters() -> None:
    for check, text, match in (
        (MetaCommentFilter(words=["draft"]), "My Draft:\ntext.", "draft"),
        (MetaCommentFilter(patterns=[r"\bin short\b"]), "Text.\nIn short, yes.", "in short"),
    ):
        document = doc(text)
        assert check.filter(document) == (False, "meta_comment")
        assert document.metadata[DROP_DETAIL] == match
    with pytest.raises(ValueError, match="words"):
        MetaCommentFilter(words=[])
    with pytest.raises(ValueError, match="patterns"):
        MetaCommentFilter(patterns=["(unclosed"])
    with pytest.raises(ValueError, match="head_lines"):
        MetaCommentFilter(head_lines=-1)


# --- GrowthFilter -----------------------------------------------------------------------------


def test_growth_uses_word_count_from_metadata() -> None:
    growth = GrowthFilter()
    assert growth.filter(doc("w " * 13, initial_words=10)) is True
    assert growth.filter(doc("w " * 12, initial_words=10)) == (False, "too_little_growth")  # 12 is not > 12


def test_growth_counts_the_source_text_when_no_count_is_given() -> None:
    growth = GrowthFilter(min_ratio=2.0)
    assert growth.filter(doc("一二三四五", initial_response="一二")) is True
    assert growth.filter(doc("一二三四", initial_response="一二")) == (False, "too_little_growth")
    assert GrowthFilter(source_key="src", source_words_key=None).filter(doc("a b c d", src="a b")) is True


def test_growth_missing_source_and_bad_ratio() -> None:
    assert GrowthFilter().filter(doc("text")) == (False, "missing_source")
    for ratio in (0, -1.0):
        with pytest.raises(ValueError, match="min_ratio"):
            GrowthFilter(min_ratio=ratio)


# --- every filter on bad input -----------------------------------------------------------------

# --- CharacterLoopFilter ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "loop",
    [
        "z" * 81,  # one token, repeated (measured: 'zzzz…' to max_tokens)
        "💐" * 81,  # an emoji loop: no whitespace, no letter, unseen by RepetitionFilter
        ":D" * 41,
        "；" * 81,
        "长" * 81,
        "•\n" * 41,  # whitespace inside the unit counts, as long as the unit is not all whitespace
        "ahaha, " * 12,
        "-" * 81,
    ],
)
def test_character_loop_drops_runaway_loops(loop: str) -> None:
    document = doc(f"A fine start.\n\n{loop}\n\nA fine end.")
    assert CharacterLoopFilter().filter(document) == (False, "character_loop")
    assert document.metadata[DROP_DETAIL].endswith("…")


@pytest.mark.parametrize(
    "text",
    [
        "=" * 80,  # a plain-text separator line
        "Chapter 1\n" + "-" * 80 + "\nIt began.",
        "his father's son's son's son's son's son's son",  # the longest natural loop measured: 30
        "| a | b |\n|---|---|---|---|---|---|---|---|---|---|\n| 1 | 2 |",
        "\n" * 500 + " " * 500 + "\t" * 200,  # whitespace alone is never a loop
        "https://example.org/" + "".join(chr(0x4E00 + i) for i in range(300)),
        ENGLISH * 30,
    ],
)
def test_character_loop_keeps_natural_text(text: str) -> None:
    assert CharacterLoopFilter().filter(doc(text)) is True


def naive_loop(text: str, max_chars: int, max_period: int) -> str | None:
    """The rule, written the obvious way: every stretch that ends where it first exceeds
    `max_chars`, checked for every period."""
    for end in range(max_chars + 1, len(text) + 1):
        stretch = text[end - max_chars - 1 : end]
        for period in range(1, max_period + 1):
            if not stretch.isspace() and all(
                stretch[k] == stretch[k - period] for k in range(period, len(stretch))
            ):
                return stretch
    return None


@given(loop_texts, st.integers(1, 10), st.integers(1, 4))
def test_character_loop_agrees_with_naive_rule(text: str, max_chars: int, max_period: int) -> None:
    max_chars = max(max_chars, max_period)
    assert find_character_loop(text, max_chars, max_period) == naive_loop(text, max_chars, max_period)


def test_character_loop_bad_parameters() -> None:
    with pytest.raises(ValueError, match="max_period"):
        CharacterLoopFilter(max_period=0)
    with pytest.raises(ValueError, match="max_chars"):
        CharacterLoopFilter(max_chars=4, max_period=8)


ALL_FILTERS = [
    RepetitionFilter,
    CharacterLoopFilter,
    EndingFilter,
    LengthFilter,
    MetaCommentFilter,
    GrowthFilter,
]


@pytest.mark.parametrize("make", ALL_FILTERS)
def test_missing_or_none_text_is_a_drop_reason_not_a_crash(make: type) -> None:
    assert make().filter(doc(None)) == (False, MISSING_TEXT)
    assert make(text_key="absent").filter(doc("text")) == (False, MISSING_TEXT)


@pytest.mark.parametrize("make", ALL_FILTERS)
@given(text=texts)
def test_filters_return_true_or_false_with_reason(make: type, text: str) -> None:
    result = make().filter(doc(text, initial_words=1))
    assert result is True or (result[0] is False and isinstance(result[1], str) and result[1])


@pytest.mark.parametrize("make", ALL_FILTERS)
def test_megabyte_single_line(make: type) -> None:
    line = " ".join(f"w{i}" for i in range(150_000))  # ~1 MB, no line break, no repeat
    result = make().filter(doc(line, initial_words=10))
    expected = (False, "bad_ending") if make is EndingFilter else True
    assert result == expected
