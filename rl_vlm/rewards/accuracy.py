"""A strict accuracy reward for ``<answer>``-tagged responses (algorithms.md §7).

``accuracy_reward`` returns a float in {0.0, 1.0}. The predicted answer is the content of the
LAST complete ``<answer>…</answer>`` pair (VLM-R1's choice); a response without one scores 0.
It is correct when any of these holds, checked in order:

1. Normalised exact match: lower-cased, whitespace collapsed, the articles a/an/the dropped,
   and sentence punctuation (``.,;:!?`` and quotes) stripped at the ends. Signs and brackets
   are kept, so "-3" ≠ "3" and "(1,2)" ≠ "[1,2]".
2. Multiple choice: when the ground truth is one option letter A–E ("B", "(B)", "B.", "B)"),
   the answer must name the same letter: alone in one of those forms (either case), or in
   upper case with a delimiter and the option text ("(B) 12", "B. 12"; not "B 12"). With a
   letter ground truth this rule decides; rule 3 is not tried.
3. Math: when the ground truth contains a digit or a LaTeX command, both strings are parsed by
   ``math_verify`` as ONE LaTeX expression each (wrapped in ``\\boxed{}``) and compared with
   ``verify(gold, pred)``, so "\\frac{1}{2}" = "0.5" and "1,000" = "1000".

Deliberately strict, unlike the lenient fall-backs of the authors' code (§6.2, §9.21):
math_verify's default extraction would take the last number of "2 or 3" and accept it for 3;
parsing the whole answer makes that the set {2, 3} instead. Words are never compared
symbolically (math_verify would read "cat" and "act" as the same product a·c·t), hence the
digit/LaTeX gate on the ground truth. There is no substring or fuzzy matching.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

# Content of an <answer> pair that contains no further <answer> opener, so the LAST complete
# pair wins even after an unclosed earlier tag ("<answer>a <answer>b</answer>" -> "b").
_ANSWER = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_SPACES = re.compile(r"\s+")
_END_CHARS = " \t\n\r\f\v.,;:!?\"'`"
# Ground-truth option letter: "B", "(B)", "B.", "B)", "B:".
_GT_LETTER = re.compile(r"\(?([A-E])\)?[.:)]?")
# Predicted option: the bare forms above in either case ("b" as "B", which rule 1 already
# accepts, but "a" is an article there), or an upper-case letter with a delimiter and the
# option text, "(B) 12" / "B. 12" / "B) 12" / "B: 12". The delimiter is required so that
# "A cat" is not read as option A.
_PRED_LETTER_BARE = re.compile(r"\(?([A-Ea-e])\)?[.:)]?")
_PRED_LETTER_TEXT = re.compile(r"(?:\(([A-E])\)|([A-E])[.:)])\s.*", re.DOTALL)
_MATHY = re.compile(r"[0-9\\]")
_MATH_TIMEOUT_S = 5


def extract_answer(response: str) -> str | None:
    """The stripped content of the last complete ``<answer>…</answer>`` pair, or None."""
    found = _ANSWER.findall(response)
    return found[-1].strip() if found else None


def normalize_text(text: str) -> str:
    """Lower-case, strip sentence punctuation at the ends, drop articles, collapse spaces.

    A text that is nothing but an article ("A", "the") is kept as it is: it is an answer (an
    option letter, a grade), not a determiner."""
    text = text.lower().strip(_END_CHARS)
    stripped = _SPACES.sub(" ", _ARTICLES.sub(" ", text)).strip(_END_CHARS)
    return stripped or _SPACES.sub(" ", text)


def option_letter(text: str, ground_truth: bool = False) -> str | None:
    """The option letter A–E that ``text`` names, or None (see the module docstring, rule 2)."""
    text = text.strip()
    if ground_truth:
        m = _GT_LETTER.fullmatch(text)
    else:
        m = _PRED_LETTER_BARE.fullmatch(text) or _PRED_LETTER_TEXT.fullmatch(text)
    if m is None:
        return None
    return next(g for g in m.groups() if g is not None).upper()


def _strip_math_delimiters(text: str) -> str:
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            return text[len(left): -len(right)].strip()
    return text


_UNIT_WORDS = (
    "mm|cm|dm|m|km|in|inch|inches|ft|foot|feet|yd|yards?|mi|miles?|mg|g|kg|lbs?|oz|ml|mL|l|L|s|sec|"
    "seconds?|min|minutes?|h|hr|hrs|hours?|days?|weeks?|months?|years?|deg|degrees?|rad|radians?|units?|"
    "(?:milli|centi|kilo)?(?:meters?|metres?|grams?|liters?|litres?)|dollars?|cents?|pounds?|"
    "mph|km/h|m/s|cm/s|N|J|W|V|A|Pa|kPa|Hz"
)
# A unit at the end, after a number or a closing brace: "3 cm", "3cm", "12 m^2", "5\\,\\text{kg}",
# "7 square feet". A one-letter unit needs a separator or \\text{} ("2 m", not "2m": that is 2·m).
_SEP = r"(?:\s|\\[,;:! ]|~)"
_TRAILING_UNIT = re.compile(
    rf"(?<=[\d}}.])(?:{_SEP}*\\(?:text|mathrm|mbox|textrm|rm)\s*\{{\s*(?:{_UNIT_WORDS})\s*\}}"
    rf"|{_SEP}+(?:square\s+|sq\.?\s*|cubic\s+)?(?:{_UNIT_WORDS})\b"
    rf"|(?:{_UNIT_WORDS})(?<=[A-Za-z/][A-Za-z])\b)"
    rf"(?:\^\{{?[23]\}}?|[²³])?\.?$"
)
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree")
_PERCENT = re.compile(r"\\?%$")


def strip_units(text: str) -> str:
    """``text`` without a trailing unit (a known word or ``\\text{…}`` of one, optionally squared or
    cubed), degree signs and a trailing percent sign: "3 cm" -> "3", "12 m^2" -> "12",
    "90°" -> "90", "50\\%" -> "50". Anything that is not a number followed by a unit is kept."""
    out = _DEGREES.sub("", text.strip()).strip()
    out = _PERCENT.sub("", out).strip()
    out = _TRAILING_UNIT.sub("", out).strip()
    return out or text.strip()


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``, braces matched; None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # unbalanced


def math_equal(ground_truth: str, prediction: str) -> bool:
    """``math_verify.verify(parse(gt), parse(pred))`` with each side parsed as one whole LaTeX
    expression; False when either side does not parse."""
    from math_verify import LatexExtractionConfig, parse, verify

    # math_verify's timeouts use SIGALRM, which only works in the main thread; elsewhere
    # (e.g. a threaded Ray actor) they must be off or every call raises.
    timeout = _MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    config = [LatexExtractionConfig(boxed_match_priority=0)]

    def whole(text: str) -> list[Any]:
        return list(parse("\\boxed{" + _strip_math_delimiters(text) + "}", extraction_config=config,
                          fallback_mode="no_fallback", parsing_timeout=timeout))

    gold, pred = whole(strip_units(ground_truth)), whole(strip_units(prediction))
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def accuracy_reward(response: str, row: Mapping[str, Any]) -> float:
    """1.0 if the last ``<answer>`` of ``response`` matches ``row["answer"]``, else 0.0.

    The rules are in the module docstring (§7; strict, per the guidance at the top of
    algorithms.md). A missing ``answer`` field raises KeyError, which the reward manager counts
    as an error.
    """
    pred = extract_answer(response)
    gt = str(row["answer"]).strip()
    if not pred or not gt:
        return 0.0
    if pred == gt:
        return 1.0
    norm_gt, norm_pred = normalize_text(gt), normalize_text(pred)
    if norm_gt and norm_gt == norm_pred:
        return 1.0
    gt_letter = option_letter(gt, ground_truth=True)
    if gt_letter is not None:
        return 1.0 if option_letter(pred) == gt_letter else 0.0
    if _MATHY.search(gt) and math_equal(gt, pred):
        return 1.0
    return 0.0


def exact_match_reward(response: str, row: Mapping[str, Any]) -> float:
    """1.0 iff the last ``<answer>`` content equals ``row["answer"]`` after :func:`normalize_text`
    (case, articles, whitespace, end punctuation); a list ``answer`` accepts any of its items.
    For yes/no, counting, colour and other short-answer VQA; no math or option-letter rules."""
    pred = extract_answer(response)
    answers = row["answer"]
    golds = answers if isinstance(answers, (list, tuple)) else [answers]
    if not pred:
        return 0.0
    norm = normalize_text(pred)
    return 1.0 if any(norm and norm == normalize_text(str(g)) for g in golds) else 0.0


def math_reward(response: str, row: Mapping[str, Any]) -> float:
    """1.0 iff the predicted answer is mathematically equal to ``row["answer"]`` (math_verify).

    The prediction is the last ``<answer>`` content, or the last ``\\boxed{}`` inside it when it has
    one; a response without an ``<answer>`` pair falls back to its last ``\\boxed{}`` (EasyR1-style
    outputs). Both sides lose trailing units (:func:`strip_units`) and are parsed whole (see
    :func:`math_equal`): "\\frac{1}{2}" = "0.5" = "1/2", "3 cm" = "3", "2\\sqrt{2}" = "\\sqrt{8}".
    A normalised exact match also counts (for answers such as "x = y" that do not parse).
    """
    answer = extract_answer(response)
    pred = last_boxed(response) if answer is None else (last_boxed(answer) or answer)
    gt = str(row["answer"]).strip()
    if not pred or not gt:
        return 0.0
    if normalize_text(pred) == normalize_text(gt):
        return 1.0
    return 1.0 if math_equal(gt, pred) else 0.0


_LETTERS = "ABCDEFGHIJ"


def _options(row: Mapping[str, Any], key: str) -> dict[str, str]:
    raw = row.get(key)
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return {str(k).strip().upper(): str(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return {_LETTERS[i]: str(v) for i, v in enumerate(raw[: len(_LETTERS)])}
    raise ValueError(f"row[{key!r}] must be a list of option texts or a letter -> text mapping")


def _letter_of(text: str, options: Mapping[str, str], ground_truth: bool) -> str | None:
    letter = option_letter(text, ground_truth=ground_truth)
    if letter is not None:
        return letter
    norm = normalize_text(text)
    hits = [k for k, v in options.items() if norm and normalize_text(v) == norm]
    return hits[0] if len(hits) == 1 else None


def multiple_choice_reward(response: str, row: Mapping[str, Any], options_key: str = "options") -> float:
    """1.0 iff the last ``<answer>`` names the same option as ``row["answer"]``.

    An option is named by its letter A–E ("B", "(B)", "B.", "B)", "b"), by a letter with its text
    ("B. cat", "(B) cat"; upper case and a delimiter), or, when the row lists its options in
    ``row[options_key]`` (a list, lettered A, B, … in order, or a letter -> text mapping), by the
    option text alone ("cat", normalised as in :func:`normalize_text`). The ground truth may be a
    letter or an option's text. Several letters ("B, C") never match. A ground truth that names no
    option raises ValueError (counted as an error): the row is not a multiple-choice row.
    """
    options = _options(row, options_key)
    gt = _letter_of(str(row["answer"]), options, ground_truth=True)
    if gt is None:
        raise ValueError(f"answer {row['answer']!r} is neither an option letter nor one option's text")
    pred = extract_answer(response)
    if not pred:
        return 0.0
    return 1.0 if _letter_of(pred, options, ground_truth=False) == gt else 0.0
