import random

from selflengthen.builders.extend import split_parts
from selflengthen.builders.length_control import constrained_instruction
from selflengthen.builders.self_instruct import InstructionPool, candidate_from
from selflengthen.prompts import (
    LANGUAGES,
    detect_language,
    judge_yes_words,
    prompt_language,
    shipped_seeds,
    template,
    variants,
)


def test_split_parts_paragraphs_then_lines() -> None:
    assert split_parts("a\n\nb\n \nc") == (["a", "b", "c"], "\n\n")
    assert split_parts("one\ntwo\n\nthree\nfour") == (["one", "two", "three", "four"], "\n")
    assert split_parts("single line") == (["single line"], "\n")


def test_candidate_is_the_first_line_without_its_number() -> None:
    assert (
        candidate_from(" Write a guide to chess openings.\n4. Write a poem.")
        == "Write a guide to chess openings."
    )
    assert candidate_from("\n\n5) 写一篇关于茶的文章。\n6. 另一条") == "写一篇关于茶的文章。"
    assert candidate_from("   ") == ""


def test_pool_rejects_duplicates_after_normalising() -> None:
    pool = InstructionPool(["Write a Story about  tea.", "写一篇文章。"])
    assert not pool.add("write a story about tea.")
    assert pool.add("Write a report on coffee.")
    examples = pool.examples("en", random.Random(0))
    assert len(examples) == 2 and all(detect_language(example) == "en" for example in examples)


def test_language_detection_and_templates() -> None:
    assert detect_language("Write an essay about rivers.") == "en"
    assert detect_language("Écrivez un essai sur les rivières.") == "en"  # Latin letters: English templates
    assert detect_language("写一篇关于河流的文章。") == "zh"
    assert detect_language("用 Python 写一个 HTTP 服务的教程") == "zh"
    assert detect_language("اكتب مقالة طويلة عن الأنهار") == "ar"  # was labelled "en"
    assert detect_language("اكتب مقالة عن Python و HTTP") == "ar"  # most letters Arabic
    assert detect_language("Напишите эссе о реках.") == "ru"
    assert detect_language("강에 대한 에세이를 쓰세요.") == "ko"
    assert detect_language("เขียนเรียงความเกี่ยวกับแม่น้ำ") == "th"
    assert detect_language("Write about the word سلام.") == "en"
    for language in ("ar", "ru", "ko", "th"):  # prompted with the English templates
        assert prompt_language(language) == "en"
        assert template(language, "extend").template == template("en", "extend").template
        about = [variant.template for variant in variants(language, "length_about")]
        assert about == [variant.template for variant in variants("en", "length_about")]
    for language in LANGUAGES:
        assert "$instruction" in template(language, "judge").template
        extend = template(language, "extend").template
        assert "$instruction" in extend and "$text" in extend
        assert template(language, "self_instruct").substitute()
        assert judge_yes_words(language)


def test_shipped_seeds_are_ours_varied_and_unique() -> None:
    seeds = shipped_seeds()
    by_language = {
        language: [s for s in seeds if detect_language(s["instruction"]) == language]
        for language in LANGUAGES
    }
    assert len(by_language["en"]) >= 40 and len(by_language["zh"]) >= 40
    assert len({s["id"] for s in seeds}) == len(seeds) == len({s["instruction"] for s in seeds})


def test_a_length_constraint_for_a_language_without_templates_is_written_in_english() -> None:
    constraint = {"constraint_type": "about", "target_words": 500, "low_words": 400, "high_words": 600}
    written = constrained_instruction("اكتب مقالة عن الأنهار", "ar", constraint, random.Random(0))
    assert "اكتب مقالة عن الأنهار." in written and "500" in written
