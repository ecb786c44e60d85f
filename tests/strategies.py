"""Hypothesis strategies for texts that mix scripts, whitespace and odd characters."""

from hypothesis import strategies as st

#: Characters that exercise every class: ASCII, Latin-1, CJK ideographs and punctuation,
#: full-width forms, Unicode whitespace (incl. U+3000), controls, astral characters, surrogates,
#: Thai and Khmer letters with their marks, emoji with their modifiers and joiners, the invisible
#: separators and the joiners after Latin and Arabic letters.
interesting_chars = st.one_of(
    st.sampled_from(list("ab c.\n\t\r\x0b\x0c\x1c\x1f\x85\xa0\u2003\u3000\u3001。中文字，！")),
    st.sampled_from(list("ภาษไทยง่ข้ิ\u0e48ខ្ញុំ😀👋\U0001f3fd\ufe0f\u20e3\U0001f1eb\U0001f1f7❤")),
    st.sampled_from(list("\u200b\u200c\u200d\u200e\u200f\u2060\u2066\ufeff\u061cسلام")),
    st.characters(min_codepoint=0, max_codepoint=0x7F),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x4E20),
    st.characters(min_codepoint=0xFF00, max_codepoint=0xFF20),
    st.characters(min_codepoint=0x1F600, max_codepoint=0x1F610),
    st.characters(min_codepoint=0xD800, max_codepoint=0xD805, categories=["Cs"]),
    st.characters(),
)
texts = st.text(alphabet=interesting_chars, max_size=300)

#: Texts over a tiny vocabulary, so that repeated n-grams are common.
small_vocabulary = ["a", "b", "ab", "中", "文", "x.", "aXcde", "aYcde", "ไทย", "😀", "👋🏽"]
separators = st.sampled_from([" ", "  ", "\n", "\t", "\u3000", "", "\u200b", "\u200d"])


@st.composite
def repetitive_texts(draw: st.DrawFn) -> str:
    words = draw(st.lists(st.sampled_from(small_vocabulary), max_size=60))
    pieces = []
    for word in words:
        pieces += [word, draw(separators)]
    return "".join(pieces)


#: Texts made of short units repeated back to back, so that character loops are common.
loop_texts = st.lists(
    st.tuples(st.text(alphabet="ab 中\n💐", min_size=1, max_size=4), st.integers(1, 9)), max_size=8
).map(lambda units: "".join(unit * count for unit, count in units))
