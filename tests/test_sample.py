import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from selflengthen.builders.sample import length_weighted_sample
from selflengthen.text import count_words

NEVER_KEPT_SHARE = 1 - 2 ** (-1 / 3)  # rank/n at or below this gives 2·r³ >= 1


def frame_of(lengths: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"row": list(range(len(lengths))), "words": lengths})


def test_keep_probabilities_match_the_formula() -> None:
    """Lengths 10..40: ranks 1..4, r = .75 .5 .25 0, keep probability 1 − 2r³ = .156 .75 .969 1."""
    lengths = [40, 10, 30, 20]
    trials = 6_000
    kept = np.zeros(4)
    for seed in range(trials):
        kept[length_weighted_sample(frame_of(lengths), "words", seed)["row"].to_numpy()] += 1
    assert kept[0] == trials
    np.testing.assert_allclose(kept[[1, 3, 2]] / trials, [1 - 2 * 0.75**3, 0.75, 1 - 2 * 0.25**3], atol=0.02)


def test_ties_share_the_last_rank() -> None:
    """Lengths 5, 5, 9: both 5s have rank 2 (r = 1/3, each kept with probability 1 − 2/27)."""
    kept = np.zeros(3)
    for seed in range(4000):
        kept[length_weighted_sample(frame_of([5, 5, 9]), "words", seed)["row"].to_numpy()] += 1
    assert kept[2] == 4000
    np.testing.assert_allclose(kept[:2] / 4000, [25 / 27, 25 / 27], atol=0.02)


@pytest.mark.parametrize("n", [1, 2, 5, 50, 1000])
def test_equal_lengths_are_all_kept(n: int) -> None:
    """Every row is among the longest, so every row is kept (the min-rank rule kept none)."""
    for seed in range(5):
        assert length_weighted_sample(frame_of([300] * n), "words", seed).height == n


def test_bad_length_values_are_refused() -> None:
    with pytest.raises(ValueError, match="numbers written as text"):
        length_weighted_sample(pl.DataFrame({"words": ["300", " 12 ", "4.5"]}), "words", 0)
    with pytest.raises(ValueError, match="not a word count \\(-3\\)"):
        length_weighted_sample(frame_of([5, -3, 9]), "words", 0)
    with pytest.raises(ValueError, match="not a word count"):
        length_weighted_sample(pl.DataFrame({"words": [1.0, float("inf")]}), "words", 0)
    texts = pl.DataFrame({"words": ["300", "a real answer"]})  # a text column with one numeric answer
    assert "a real answer" in length_weighted_sample(texts, "words", 0)["words"].to_list()


def test_survival_and_monotone_rate_on_many_distinct_lengths() -> None:
    n = 200_000
    lengths = np.random.default_rng(1).permutation(n) + 1
    kept = length_weighted_sample(pl.DataFrame({"words": lengths}), "words", seed=7)["words"].to_numpy()
    assert kept.size / n == pytest.approx(0.5953, abs=0.005)
    assert kept.min() > NEVER_KEPT_SHARE * n
    per_decile = np.bincount((kept - 1) * 10 // n, minlength=10) / (n / 10)
    assert per_decile[0] == 0 and np.all(np.diff(per_decile) >= 0) and np.all(np.diff(per_decile[1:]) > 0)
    assert per_decile[-1] == pytest.approx(0.9994, abs=0.005)  # 1 − ∫ 2r³ over the top decile


def test_text_column_is_counted_in_words_not_characters() -> None:
    texts = ["一二三四五六七八", "alpha beta gamma", "a b c d e f g h i j", "x"]
    by_text = length_weighted_sample(pl.DataFrame({"text": texts}), "text", seed=3)
    by_count = length_weighted_sample(
        pl.DataFrame({"text": texts, "n": [count_words(t) for t in texts]}), "n", 3
    )
    assert by_text["text"].to_list() == by_count["text"].to_list()
    assert "a b c d e f g h i j" in by_text["text"].to_list()  # longest in words (10), not in characters


def test_empty_frame_and_bad_columns() -> None:
    empty = pl.DataFrame({"words": []}, schema={"words": pl.Int64})
    assert length_weighted_sample(empty, "words", 0).height == 0
    with pytest.raises(ValueError, match="'missing'"):
        length_weighted_sample(frame_of([1]), "missing", 0)
    with pytest.raises(ValueError, match="missing lengths"):
        length_weighted_sample(pl.DataFrame({"words": [1, None]}), "words", 0)
    with pytest.raises(ValueError, match="word counts or texts"):
        length_weighted_sample(pl.DataFrame({"words": [[1], [2]]}), "words", 0)


lengths_lists = st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=200)


@given(lengths_lists, st.integers(min_value=0, max_value=2**32))
def test_same_seed_same_rows(lengths: list[int], seed: int) -> None:
    first = length_weighted_sample(frame_of(lengths), "words", seed)
    assert first.equals(length_weighted_sample(frame_of(lengths), "words", seed))
    rows = first["row"].to_list()
    assert rows == sorted(rows)  # a subset, in the input order


@given(lengths_lists, st.integers(min_value=0, max_value=2**32))
def test_longest_kept_and_shortest_never(lengths: list[int], seed: int) -> None:
    kept = set(length_weighted_sample(frame_of(lengths), "words", seed)["row"].to_list())
    longest = max(lengths)
    assert {row for row, length in enumerate(lengths) if length == longest} <= kept
    n = len(lengths)
    for row, length in enumerate(lengths):
        rank = sum(other <= length for other in lengths)
        if rank / n <= NEVER_KEPT_SHARE:
            assert row not in kept


@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=100), st.integers(0, 2**32))
def test_counting_ranks_equal_sorting_ranks(lengths: list[int], seed: int) -> None:
    """Integer counts over a small range are ranked by counting, wide or float ones by polars'
    sort; both must keep the same rows."""
    as_int = length_weighted_sample(frame_of(lengths), "words", seed)
    as_float = length_weighted_sample(
        frame_of(lengths).with_columns(pl.col("words").cast(pl.Float64)), "words", seed
    )
    assert as_int["row"].to_list() == as_float["row"].to_list()
