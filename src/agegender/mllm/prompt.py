"""The paper's zero-shot prompt (section 4.2), versioned, and the answer format it asks for.

A prompt is part of the experiment: a changed prompt is a different experiment and must never share cached
answers with the old one. Prompts are therefore registered under a version string, the version goes into the
response store's key, and a version, once registered, cannot be given a different text (register a new
version instead).
"""

from __future__ import annotations

import hashlib
import math

from agegender.errors import InputError

#: the paper's prompt, verbatim (section 4.2 of "Beyond Specialization", 2024).
PROMPT = (
    "Please provide the perceived gender and estimated age of the individual in this photo in the format "
    "'[gender; age]', where the age must be a single integer between 0 and 130. It should not be a range. "
    "The gender must be one of two options: 'male' or 'female'. I understand that your response will be based "
    "on visual analysis and may not accurately reflect the actual age or gender identity of the individual."
)

#: the version of `PROMPT`; part of every cache key and manifest.
PROMPT_VERSION = "paper-2024-v1"

#: version -> prompt text. Add variants with `register_prompt`.
PROMPTS: dict[str, str] = {PROMPT_VERSION: PROMPT}


def register_prompt(version: str, text: str) -> str:
    """Register a prompt variant under a new version.

    Args:
        version: a short, unique name (e.g. "paper-2024-v1-no-disclaimer").
        text: the prompt text.

    Returns:
        The version (so a module can write `MY_VERSION = register_prompt("...", "...")`).

    Raises:
        InputError: empty version or text, or a version already registered with a different text (a cached
            answer to the old text would otherwise be reused for the new one).
    """
    if not version or not version.strip():
        raise InputError("a prompt version must be a non-empty string", field="prompt_version")
    if not text or not text.strip():
        raise InputError(f"prompt {version!r} has no text", field="prompt_version")
    if version in PROMPTS and PROMPTS[version] != text:
        raise InputError(
            f"prompt version {version!r} is already registered with a different text; register the new text "
            "under a new version (the version is part of the response cache key)",
            field="prompt_version",
        )
    PROMPTS[version] = text
    return version


def get_prompt(version: str = PROMPT_VERSION) -> str:
    """Return the text of a registered prompt version.

    Raises:
        InputError: unknown version (the message lists the known ones).
    """
    try:
        return PROMPTS[version]
    except KeyError:
        known = sorted(PROMPTS)
        raise InputError(f"unknown prompt version {version!r}; known: {known}", field="prompt_version") from None


def prompt_hash(version: str = PROMPT_VERSION) -> str:
    """SHA-256 of a prompt's text (UTF-8): the manifest records it next to the version."""
    return hashlib.sha256(get_prompt(version).encode("utf-8")).hexdigest()


def format_answer(gender: str, age: float) -> str:
    """The answer the prompt asks for, e.g. `"[female; 40]"`: the fine-tuning target format.

    Args:
        gender: `male` or `female` (any case).
        age: years; rounded to the nearest integer (half up), as the prompt asks for a single integer.

    Raises:
        InputError: gender other than male/female, or an age that is not a number in [0, 130].
    """
    g = str(gender).strip().lower()
    if g not in ("male", "female"):
        raise InputError(f"gender must be 'male' or 'female', got {gender!r}", field="gender")
    try:
        value = float(age)
    except (TypeError, ValueError):
        raise InputError(f"age must be a number, got {age!r}", field="age") from None
    if not math.isfinite(value) or not 0.0 <= value <= 130.0:
        raise InputError(f"age must lie in [0, 130], got {age!r}", field="age")
    return f"[{g}; {math.floor(value + 0.5)}]"
