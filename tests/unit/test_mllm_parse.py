"""The paper's prompt and the answer parser, over a corpus of realistic MLLM answers (one case per rule)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agegender.errors import InputError
from agegender.mllm import prompt as prompt_mod
from agegender.mllm.parse import ParsedAnswer, parse_answer
from agegender.mllm.prompt import PROMPT, PROMPT_VERSION, format_answer, get_prompt, prompt_hash, register_prompt

PAPER = Path("/work/shared/paper/beyond-specialization.txt")

OK, REF, UNP = "ok", "refused", "unparsed"

# (text, status, gender, age)
CORPUS: list[tuple[str | None, str, str | None, float | None]] = [
    # the asked format, and case / spacing
    ("[female; 40]", OK, "female", 40.0),
    ("[male; 35]", OK, "male", 35.0),
    ("[Female; 40]", OK, "female", 40.0),
    ("[MALE; 61]", OK, "male", 61.0),
    ("[ male ;  35 ]", OK, "male", 35.0),
    ("[male;35]", OK, "male", 35.0),
    ("  [female; 23]  \n", OK, "female", 23.0),
    # comma instead of semicolon
    ("[male, 35]", OK, "male", 35.0),
    ("[Female,22]", OK, "female", 22.0),
    # units after the number
    ("[female; 40 years]", OK, "female", 40.0),
    ("[female; 40 years old]", OK, "female", 40.0),
    ("[male; 1 year]", OK, "male", 1.0),
    ("[male; 35 y.o.]", OK, "male", 35.0),
    ("[male; 35yo]", OK, "male", 35.0),
    ("[female; 27 yrs]", OK, "female", 27.0),
    ("[female; 8 months]", OK, "female", 8 / 12),
    # decimals and hedges
    ("[female; 40.5]", OK, "female", 40.5),
    ("[male; approximately 45]", OK, "male", 45.0),
    ("[female; ~30]", OK, "female", 30.0),
    ("[male; around 50 years old]", OK, "male", 50.0),
    # the bracket inside longer text, code fences, quotes, markdown
    ("Sure! Based on the visual cues: [male; 28]. This is only an estimate.", OK, "male", 28.0),
    ("```\n[female; 52]\n```", OK, "female", 52.0),
    ("```text\n[male; 19]\n```", OK, "male", 19.0),
    ("'[female; 33]'", OK, "female", 33.0),
    ("**[male; 44]**", OK, "male", 44.0),
    ("[**male**; 35]", OK, "male", 35.0),
    ("['female'; '40']", OK, "female", 40.0),
    ("[\u201cfemale\u201d; 40]", OK, "female", 40.0),
    ("The answer in the format '[gender; age]' is: [male; 50]", OK, "male", 50.0),
    ("[female; 40]\n\nFinal answer: [female; 40]", OK, "female", 40.0),
    ("[gender: male; age: 35]", OK, "male", 35.0),
    ("I can't be certain, but my best estimate is [female; 40].", OK, "female", 40.0),
    # full-width input
    ("\uff3bfemale\uff1b40\uff3d", OK, "female", 40.0),
    ("[\uff26\uff25\uff2d\uff21\uff2c\uff25; 40]", OK, "female", 40.0),
    # ranges -> midpoint (hyphen, en dash, em dash, "to")
    ("[female; 30-35]", OK, "female", 32.5),
    ("[female; 30\u201335]", OK, "female", 32.5),
    ("[male; 60 \u2014 70]", OK, "male", 65.0),
    ("[male; 30 to 40 years]", OK, "male", 35.0),
    ("[male; 25 - 30 years old]", OK, "male", 27.5),
    # swapped order (unambiguous: one field is a number, the other a word)
    ("[40; female]", OK, "female", 40.0),
    ("[35 years; Male]", OK, "male", 35.0),
    # synonyms
    ("[man; 40]", OK, "male", 40.0),
    ("[woman; 71]", OK, "female", 71.0),
    ("[boy; 6]", OK, "male", 6.0),
    ("[girl; 7]", OK, "female", 7.0),
    ("[F; 20]", OK, "female", 20.0),
    ("[M; 20]", OK, "male", 20.0),
    # bounds
    ("[male; 0]", OK, "male", 0.0),
    ("[male; 130]", OK, "male", 130.0),
    ("[female; 131]", UNP, None, None),
    ("[female; 200 years]", UNP, None, None),
    ("[male; 120-140]", UNP, None, None),
    ("[female; -3]", UNP, None, None),
    # ages that are not a single number or range
    ("[female; 40s]", UNP, None, None),
    ("[female; 40+]", UNP, None, None),
    ("[female; forty]", UNP, None, None),
    ("[male; unknown]", UNP, None, None),
    ("[female; 40,5]", UNP, None, None),
    ("[male; 45-40]", UNP, None, None),
    # genders other than the two
    ("[non-binary; 30]", UNP, None, None),
    ("[unknown; 30]", UNP, None, None),
    ("[male/female; 30]", UNP, None, None),
    ("[androgynous; 25]", UNP, None, None),
    ("[person; 25]", UNP, None, None),
    # conflicting or malformed bracket answers
    ("[female; 40] or possibly [male; 40]", UNP, None, None),
    ("[female; 40] [female; 45]", UNP, None, None),
    ("[female; 40] [non-binary; 40]", UNP, None, None),
    ("[male; 35; 40]", UNP, None, None),
    # no answer in any readable form
    ("[gender; age]", UNP, None, None),
    ("The person is a 35-year-old man.", UNP, None, None),
    ("female", UNP, None, None),
    ("", UNP, None, None),
    ("   \n", UNP, None, None),
    (None, UNP, None, None),
    ("Age: 33", UNP, None, None),
    ("Gender: male", UNP, None, None),
    # labelled fields and bare pairs (lenient, unambiguous)
    ("Gender: male, Age: 35", OK, "male", 35.0),
    ("gender = female; age = 29", OK, "female", 29.0),
    ('{"gender": "female", "age": 40}', OK, "female", 40.0),
    ("**Gender:** Female\n**Age:** 62", OK, "female", 62.0),
    ("Sex: M\nAge: 30-40", OK, "male", 35.0),
    ("Gender: male, Age: 35. Gender: female", UNP, None, None),
    ("Gender: unknown, Age: 35", UNP, None, None),
    ("female; 40", OK, "female", 40.0),
    ("Male, 35.", OK, "male", 35.0),
    ("`35; male`", OK, "male", 35.0),
    # refusals
    ("I'm sorry, I can't help with that.", REF, None, None),
    ("I\u2019m sorry, but I can\u2019t assist with identifying people.", REF, None, None),
    ("Sorry, I cannot provide that information.", REF, None, None),
    ("I cannot determine the age or gender of this person.", REF, None, None),
    ("I am unable to estimate age from images.", REF, None, None),
    ("I'm not able to help with this request.", REF, None, None),
    ("As an AI, I do not make judgements about people's gender.", REF, None, None),
    ("It is not possible to determine the gender from this image.", REF, None, None),
    ("The age cannot be determined from this photo.", REF, None, None),
    ("I apologize, but I won't speculate about a person's age.", REF, None, None),
    ("I must decline to answer.", REF, None, None),
    ("I'm sorry, I can't determine that. [gender; age]", REF, None, None),
    ("I cannot determine the gender. [unknown; 30]", REF, None, None),
]


def test_corpus_is_large_and_covers_every_status() -> None:
    assert len(CORPUS) >= 60
    assert {c[1] for c in CORPUS} == {OK, REF, UNP}
    assert len({c[0] for c in CORPUS}) == len(CORPUS), "duplicate corpus entries"


@pytest.mark.parametrize(("text", "status", "gender", "age"), CORPUS, ids=[repr(c[0])[:40] for c in CORPUS])
def test_corpus(text: str | None, status: str, gender: str | None, age: float | None) -> None:
    got = parse_answer(text)
    assert got.status == status, got
    assert got.gender == gender, got
    if age is None:
        assert got.age is None, got
    else:
        assert got.age == pytest.approx(age), got
    assert isinstance(got.note, str) and got.note


def test_notes_name_the_rule() -> None:
    assert parse_answer("[female; 30-35]").note == "bracket, range midpoint"
    assert parse_answer("[40; female]").note == "bracket, swapped order"
    assert "conflicting" in parse_answer("[female; 40] [male; 40]").note
    assert "outside [0, 130]" in parse_answer("[female; 131]").note
    assert parse_answer("Gender: male, Age: 35").note == "labelled"
    assert parse_answer("female; 40").note == "bare"


def test_api_refusal_signals_win_over_text() -> None:
    assert parse_answer("[female; 40]", refusal="I can't help with that.") == ParsedAnswer(
        "refused", note="refusal field"
    )
    assert parse_answer(None, refusal="I can't help with that.").status == "refused"
    assert parse_answer("[female; 40]", refusal="  ").status == "ok"  # an empty refusal field is no refusal
    assert parse_answer("[female; ", finish_reason="content_filter").status == "refused"
    assert parse_answer(None, finish_reason="content_filter").status == "refused"


def test_truncated_answer_is_unparsed_and_says_so() -> None:
    got = parse_answer("Based on the image, the person appears to be", finish_reason="length")
    assert got.status == "unparsed" and "truncated" in got.note
    assert parse_answer("[male; 35]", finish_reason="length").status == "ok"


def test_parse_never_raises_on_odd_input() -> None:
    for text in ["[", "]", "[]", "[;]", "[,]", "[[[", "[;;;;]", "\x00", "[" * 1000, "9" * 500, "[male; 1e9]"]:
        assert parse_answer(text).status in {"ok", "refused", "unparsed"}


# -- prompt -----------------------------------------------------------------------------------------------------


def test_prompt_is_the_papers_verbatim() -> None:
    assert PROMPT.startswith("Please provide the perceived gender and estimated age")
    assert "'[gender; age]'" in PROMPT and "between 0 and 130" in PROMPT
    assert PROMPT.endswith("actual age or gender identity of the individual.")
    assert "  " not in PROMPT
    if PAPER.is_file():
        lines = PAPER.read_text(encoding="utf-8").splitlines()
        assert PROMPT in lines, "PROMPT differs from section 4.2 of the paper"


def test_prompt_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt_mod, "PROMPTS", dict(prompt_mod.PROMPTS))
    assert get_prompt() == PROMPT == get_prompt(PROMPT_VERSION)
    assert register_prompt("short-v1", "Gender and age as [gender; age].") == "short-v1"
    assert get_prompt("short-v1") == "Gender and age as [gender; age]."
    assert register_prompt("short-v1", "Gender and age as [gender; age].") == "short-v1"  # same text: fine
    with pytest.raises(InputError, match="different text"):
        register_prompt("short-v1", "Another text.")
    with pytest.raises(InputError, match="different text"):
        register_prompt(PROMPT_VERSION, PROMPT + " ")
    with pytest.raises(InputError, match="unknown prompt version"):
        get_prompt("nope")
    assert prompt_hash("short-v1") != prompt_hash(PROMPT_VERSION)
    assert len(prompt_hash()) == 64


def test_format_answer_round_trips_through_the_parser() -> None:
    assert format_answer("female", 40) == "[female; 40]"
    assert format_answer("Male", 35.5) == "[male; 36]"
    assert format_answer("male", 0.4) == "[male; 0]"
    for gender in ("male", "female"):
        for age in (0, 1, 17, 40, 99, 130):
            got = parse_answer(format_answer(gender, age))
            assert (got.status, got.gender, got.age) == ("ok", gender, float(age))
    for bad in [("other", 30), ("female", -1), ("female", 131), ("female", float("nan")), ("female", "x")]:
        with pytest.raises(InputError):
            format_answer(*bad)


def test_parsed_answers_always_make_a_valid_prediction_table() -> None:
    """The parser marks an impossible age `unparsed` (never clamps it), so the tables the runner writes always pass
    the prediction-table validation that `evaluate` applies, with the same age range."""
    import pandas as pd

    from agegender.data.schema import AGE_RANGE, validate_predictions

    beyond = ["I think 150", "[male; 150]", "Gender: male, Age: 150", "female; 150", "[male; 1561 months]"]
    for text in beyond:
        assert parse_answer(text).status == UNP, text
    assert parse_answer("[male; 1560 months]").age == AGE_RANGE[1]  # 130 years exactly: possible
    texts = [text for text, *_ in CORPUS] + beyond + ["[male; 1560 months]"]
    parsed = [parse_answer(text) for text in texts]
    table = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(texts))],
            "model": "m",
            "input": "body",
            "age_pred": [p.age for p in parsed],
            "gender_pred": [p.gender for p in parsed],
            "status": [p.status for p in parsed],
        }
    )
    out = validate_predictions(table, source="parsed")
    ages = out["age_pred"].dropna()
    assert len(ages) == sum(p.status == OK for p in parsed) and ages.between(*AGE_RANGE).all()


#: refusal wordings of today's models (OpenAI, Anthropic, Gemini through its OpenAI-compatible endpoint,
#: Qwen / DashScope and open models behind vLLM) to the paper's prompt: each must be `refused`
TODAYS_REFUSALS = [
    "I can't help with identifying or making assumptions about people based on their images.",
    "I'm not able to determine a person's age from an image.",
    "I cannot provide an estimate of this person's age or gender.",
    "Sorry, I can't help with that.",
    "I'm sorry, but I can't assist with that request.",
    "I'm just a language model, so I can't help you with that.",  # Gemini
    "I can't help with images of people yet.",  # Gemini
    "I'm a text-based AI and can't help with that.",
    "I'm not comfortable guessing the age or gender of a real person.",
    "I don't feel comfortable making assumptions about a person's age.",
    "I'd rather not speculate about a person's age or gender.",
    "I don't make inferences about sensitive attributes such as age or gender from images.",
    "Gender and age cannot be reliably inferred from an image.",
    "It's not appropriate for me to guess someone's age or gender based on appearance.",
    "抱歉，我无法判断图中人物的年龄和性别。",  # Qwen
    "我不能确定这个人的年龄。",
]


@pytest.mark.parametrize("text", TODAYS_REFUSALS)
def test_todays_refusal_wordings_are_refused(text: str) -> None:
    assert parse_answer(text) == ParsedAnswer("refused", note="refusal phrase")


@pytest.mark.parametrize(
    "text",
    [
        "While I cannot be certain, my estimate is [female; 40].",
        "I can't help with certainty, but [male; 35]",
        "I'm not comfortable being precise: [female; 62]",
        "抱歉, 估计如下: [female; 40]",
    ],
)
def test_a_real_answer_beside_refusal_words_stays_ok(text: str) -> None:
    assert parse_answer(text).status == "ok"
