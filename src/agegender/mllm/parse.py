"""Turn an MLLM's answer into (gender, age): `parse_answer`.

The paper asks for `[gender; age]` (`agegender.mllm.prompt.PROMPT`). Models write more or less that; these rules
say what counts. Every answer gets one of three statuses:

- `ok`: a gender and an age were read.
- `refused`: the model (or the API) declined to answer.
- `unparsed`: something else: no answer in the asked format, an invalid value, or conflicting answers.

(The prediction table's fourth status, `failed`, is for requests that got no answer at all; the runner sets it.)

Rules, in the order they are applied:

1. A non-empty API `refusal` field -> `refused`, whatever the text says. `finish_reason == "content_filter"` ->
   `refused` (the text, if any, was cut by the safety system).
2. Empty or missing text -> `unparsed`.
3. Text is normalised: Unicode NFKC (full-width letters, digits, brackets and separators such as `［］；，`
   become ASCII), typographic quotes and apostrophes become ASCII, the minus sign becomes a hyphen,
   non-breaking spaces become spaces.
4. Bracket answers: every `[...]` in the text is looked at (so the answer may sit inside longer text, a code
   fence, quotes or markdown). The content is split on `;`, or, when it has none, on `,` (a comma instead of
   the semicolon). A label before a field is dropped (`[gender: male; age: 35]`). A bracket is an *answer
   attempt* when one field holds a digit and the other letters, or when a field is a gender word; anything
   else (the echoed format `[gender; age]`, `[0, 130]`, a markdown link) is ignored.
   - Gender, any case, quotes/asterisks stripped: `male`, `female`; synonyms `man`/`boy`/`m` -> male and
     `woman`/`girl`/`f` -> female (a word that names a sex leaves no doubt; the age comes from the number).
     Anything else (`non-binary`, `unknown`, `male/female`, `androgynous`) makes the attempt invalid.
   - Age: a number with optional decimals (`40`, `40.5`), optionally hedged (`about`, `around`,
     `approximately`, `approx.`, `roughly`, `~`), optionally followed by a unit: `years`, `years old`,
     `year-old`, `yrs`, `y.o.`, `yo`, `y/o` (years), or `months`/`months old` (divided by 12). A range
     (`40-45`, `40–45`, `40—45`, `40 to 45`) gives its midpoint, the paper's rule; the lower end must not
     exceed the upper one. Ages (both ends of a range) must lie in [0, 130] (`agegender.data.schema.AGE_RANGE`,
     what a prediction table may hold: `[male; 150]` is `unparsed`, never clamped). Anything else (`40s`, `40+`,
     `-1`, `forty`, `40,5`) makes the attempt invalid.
   - Order: `[gender; age]` and the swapped `[age; gender]` are both accepted: one field is a number and the
     other a word, so the swap is unambiguous (note `swapped order`).
   - All answer attempts must be valid and agree (same gender, same age): then `ok`. Several attempts that
     disagree, or a valid one next to an invalid one -> `unparsed` (`conflicting answers`). Only invalid
     attempts -> `unparsed` with the reason, unless rule 6 finds a refusal.
5. Without any bracket attempt, two lenient forms are read, because they are unambiguous:
   - labelled fields anywhere in the text: `Gender: male, Age: 35`, `**Gender:** Male`, JSON
     `{"gender": "female", "age": 40}` (`sex` works for `gender`); both must be present, each field's values
     must agree, and they are validated as in rule 4.
   - a bare pair as the whole answer (one line, code fences, quotes and a final period stripped):
     `female; 40`, `Male, 35`, `35; male`.
   Free prose (`The person is a 35-year-old man`) is not read: the paper asked for the bracket format, and
   counting prose as `unparsed` keeps the coverage figures honest.
6. No valid answer and the text declines (`I'm sorry`, `I apologize`, `I can't` / `I cannot` / `I won't`,
   `I am unable to` / `not able to`, `unable to determine|provide|identify|estimate|...`, `as an AI`,
   `it is not possible|appropriate to determine|estimate|...`, `cannot be determined`, `I must decline`, and
   today's wordings: `can't help with identifying ...`, `I'm not comfortable guessing`, `I'd rather not
   speculate`, `I don't make inferences|assumptions`, `cannot be reliably inferred`, Qwen's Chinese `抱歉` /
   `无法判断` / `不能确定`) -> `refused`. A valid answer wins over hedging around it ("I can't be sure, but
   [female; 40]" is `ok`).
7. Otherwise `unparsed` (note says why; `truncated` when `finish_reason == "length"`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from agegender.data.schema import AGE_RANGE

Status = Literal["ok", "refused", "unparsed"]

_GENDER_WORDS: dict[str, str] = {
    "male": "male",
    "man": "male",
    "boy": "male",
    "m": "male",
    "female": "female",
    "woman": "female",
    "girl": "female",
    "f": "female",
}

_TRANSLATE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\uff3b": "[",
        "\uff3d": "]",
        "\uff1b": ";",
        "\uff0c": ",",
        "\u2212": "-",
        "\u00a0": " ",
        "\u202f": " ",
    }
)

_NUMBER = r"\d+(?:\.\d+)?"
_UNIT = r"(?P<unit>years?(?:[\s-]+old)?|yrs?\.?|y\.?\s?o\.?|y/o|months?(?:[\s-]+old)?)"
_AGE_RE = re.compile(
    rf"^(?:(?:about|around|approximately|approx\.?|roughly|~|\u2248)\s*)?(?P<lo>{_NUMBER})"
    rf"(?:\s*(?:-|\u2013|\u2014|to)\s*(?P<hi>{_NUMBER}))?\s*{_UNIT}?\.?$",
    re.IGNORECASE,
)
_BRACKET_RE = re.compile(r"\[([^\[\]\n]{1,120})\]")
_LABEL_RE = re.compile(r"^(?:gender|sex|age)\s*[:=]\s*", re.IGNORECASE)
_STRIP_CHARS = " \t\"'*_`.:"

_LABELLED_GENDER_RE = re.compile(r"\b(?:gender|sex)\b[\s\"'*]*[:=][\s\"'*]*(?P<v>[a-z][a-z/-]*)", re.IGNORECASE)
_LABELLED_AGE_RE = re.compile(
    rf"\bage\b[\s\"'*]*[:=][\s\"'*]*(?P<v>(?:(?:about|around|approximately|approx\.?|roughly|~)\s*)?"
    rf"{_NUMBER}(?:\s*(?:-|\u2013|\u2014|to)\s*{_NUMBER})?(?:\s*{_UNIT.replace('?P<unit>', '')})?)",
    re.IGNORECASE,
)

_REFUSAL_RE = re.compile(
    "|".join(
        [
            r"\bI(?:'m| am) sorry\b",
            r"^\W*sorry\b",
            r"\bI apologi[sz]e\b",
            r"\bI(?:'m| am)? (?:not able|unable) to\b",
            r"\bI (?:can't|cannot|can not|won't|will not|am not going to)\b",
            r"\bunable to (?:determine|provide|identify|estimate|assess|tell|guess|infer|help|assist|comply)\b",
            r"\bas an AI\b",
            r"\b(?:not|isn't|is not) (?:possible|appropriate|feasible) (?:for me )?to "
            r"(?:determine|estimate|identify|assess|infer|guess|tell|provide)\b",
            r"\bcannot be (?:determined|estimated|identified|assessed)\b",
            r"\bI (?:must|have to|need to) decline\b",
            # wordings of today's models (2025-26: OpenAI, Anthropic, Gemini, Qwen, open models behind vLLM)
            r"\b(?:can't|cannot|can not|won't) (?:help|assist) with (?:that|this|identifying|images of people)\b",
            r"\bI(?:'m| am| do not| don't)(?: feel)? (?:not )?comfortable (?:guessing|speculating|making|estimating)\b",
            r"\bI(?:'d| would) (?:rather|prefer) not (?:to )?(?:speculate|guess|estimate|make|infer|identify)\b",
            r"\bI (?:don't|do not) (?:make|provide) (?:inferences|assumptions|guesses|judgments|estimates)\b",
            r"\bcannot be (?:reliably|accurately) (?:inferred|determined|estimated|identified|assessed)\b",
            r"(?:抱歉|对不起|无法(?:判断|确定|识别|估计|提供)|不能(?:判断|确定|识别|估计|提供))",
        ]
    ),
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(frozen=True)
class ParsedAnswer:
    """What an answer says.

    Attributes:
        status: `ok`, `refused` or `unparsed` (see the module docstring for the rules).
        gender: `male` / `female` when `ok`, else None.
        age: years when `ok` (a range's midpoint; months / 12), else None.
        note: which rule applied or why nothing was read (for audit, not for logic).
    """

    status: Status
    gender: str | None = None
    age: float | None = None
    note: str = ""


@dataclass(frozen=True)
class _Attempt:
    gender: str | None
    age: float | None
    problem: str | None  # None = valid
    notes: tuple[str, ...] = ()


def _normalise(text: str) -> str:
    # NFKC folds full-width letters, digits and punctuation (CJK input methods) into ASCII.
    return unicodedata.normalize("NFKC", text).translate(_TRANSLATE)


def _clean_field(field: str) -> str:
    return _LABEL_RE.sub("", field.strip(_STRIP_CHARS)).strip(_STRIP_CHARS)


def _read_gender(field: str) -> str | None:
    return _GENDER_WORDS.get(field.strip(_STRIP_CHARS).lower())


def _read_age(field: str) -> tuple[float | None, str | None, tuple[str, ...]]:
    """(age, problem, notes) of an age field."""
    m = _AGE_RE.match(field.strip())
    if m is None:
        return None, f"cannot read an age in {field.strip()!r}", ()
    lo, hi = float(m["lo"]), float(m["hi"]) if m["hi"] is not None else None
    notes: list[str] = []
    scale = 1.0
    if m["unit"] and m["unit"].lower().startswith("month"):
        scale, notes = 1.0 / 12.0, ["months"]
    if hi is not None:
        if lo > hi:
            return None, f"age range {field.strip()!r} runs backwards", ()
        notes.append("range midpoint")
    low, high = AGE_RANGE
    for end in (lo, hi):
        if end is not None and not low <= end * scale <= high:
            return None, f"age {end * scale:g} outside [{low:g}, {high:g}]", ()
    age = lo if hi is None else (lo + hi) / 2.0
    return age * scale, None, tuple(notes)


def _pair(text: str) -> _Attempt | None:
    """Read `gender; age` (or the swapped order) from a bracket's content; None when it is no answer attempt."""
    if ";" in text:
        fields = text.split(";")
    elif "," in text:
        fields = text.split(",")
    else:
        fields = [text]
    fields = [_clean_field(f) for f in fields]
    has_digit = [any(c.isdigit() for c in f) for f in fields]
    has_alpha = [any(c.isalpha() for c in f) for f in fields]
    is_gender = [_read_gender(f) is not None for f in fields]
    if len(fields) != 2:
        if any(is_gender) or (any(has_digit) and any(a and not d for a, d in zip(has_alpha, has_digit, strict=True))):
            return _Attempt(None, None, f"expected two fields, got {len(fields)}")
        return None
    a, b = fields
    if has_digit[1] and not has_digit[0] and (has_alpha[0] or is_gender[0]):
        gender_field, age_field, notes = a, b, ()
    elif has_digit[0] and not has_digit[1] and (has_alpha[1] or is_gender[1]):
        gender_field, age_field, notes = b, a, ("swapped order",)
    elif is_gender[0] or is_gender[1]:
        gender_field, age_field, notes = (a, b, ()) if is_gender[0] else (b, a, ("swapped order",))
    else:
        return None
    gender = _read_gender(gender_field)
    if gender is None:
        return _Attempt(None, None, f"gender {gender_field!r} is not male or female")
    age, problem, age_notes = _read_age(age_field)
    if problem is not None:
        return _Attempt(gender, None, problem)
    return _Attempt(gender, age, None, notes + age_notes)


def _settle(attempts: list[_Attempt], kind: str, text: str, finish_reason: str | None) -> ParsedAnswer:
    """One answer out of one or more attempts of the same kind."""
    valid = [a for a in attempts if a.problem is None]
    invalid = [a for a in attempts if a.problem is not None]
    if valid and (invalid or len({(a.gender, a.age) for a in valid}) > 1):
        return ParsedAnswer("unparsed", note=f"conflicting answers ({len(attempts)} {kind} answers)")
    if valid:
        first = valid[0]
        return ParsedAnswer("ok", first.gender, first.age, ", ".join((kind, *first.notes)))
    if _REFUSAL_RE.search(text):
        return ParsedAnswer("refused", note="refusal phrase")
    note = invalid[0].problem or "invalid answer"
    if finish_reason == "length":
        note += " (truncated: finish_reason length)"
    return ParsedAnswer("unparsed", note=note)


def _labelled(text: str) -> list[_Attempt] | None:
    genders = [m["v"] for m in _LABELLED_GENDER_RE.finditer(text)]
    ages = [m["v"] for m in _LABELLED_AGE_RE.finditer(text)]
    if not genders and not ages:
        return None
    if not genders or not ages:
        missing = "gender" if not genders else "age"
        return [_Attempt(None, None, f"labelled answer without {missing}")]
    return [_pair(f"{g}; {a}") or _Attempt(None, None, f"cannot read {g!r}; {a!r}") for g in genders for a in ages]


def _bare(text: str) -> _Attempt | None:
    body = re.sub(r"^```[\w-]*\s*|\s*```$", "", text.strip()).strip().strip("\"'`").rstrip(".").strip()
    if not body or "\n" in body or len(body) > 60:
        return None
    return _pair(body)


def parse_answer(text: str | None, *, finish_reason: str | None = None, refusal: str | None = None) -> ParsedAnswer:
    """Read gender and age from an MLLM's answer, by the rules of this module's docstring.

    Args:
        text: the model's text (None when the API returned none).
        finish_reason: the API's finish reason (`content_filter` means refused).
        refusal: the API's refusal field (non-empty means refused).

    Returns:
        The parsed answer; `status` is `ok`, `refused` or `unparsed`, never an exception.
    """
    if refusal is not None and refusal.strip():
        return ParsedAnswer("refused", note="refusal field")
    if finish_reason == "content_filter":
        return ParsedAnswer("refused", note="finish_reason content_filter")
    if text is None or not text.strip():
        return ParsedAnswer("unparsed", note="empty answer")
    text = _normalise(text)
    attempts = [a for a in (_pair(m) for m in _BRACKET_RE.findall(text)) if a is not None]
    if attempts:
        return _settle(attempts, "bracket", text, finish_reason)
    labelled = _labelled(text)
    if labelled:
        return _settle(labelled, "labelled", text, finish_reason)
    bare = _bare(text)
    if bare is not None:
        return _settle([bare], "bare", text, finish_reason)
    if _REFUSAL_RE.search(text):
        return ParsedAnswer("refused", note="refusal phrase")
    note = "no '[gender; age]' answer found"
    if finish_reason == "length":
        note += " (truncated: finish_reason length)"
    return ParsedAnswer("unparsed", note=note)
