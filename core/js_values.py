"""JavaScript's value conversions that GrowthBook's conditions rely on: `Number(string)`, `String(number)`
and GrowthBook's padded version strings (`$veq` ... `$vlte`).

GrowthBook's reference SDK is JavaScript, so a condition's mixed comparisons (`"8" > 5`) convert the way
JavaScript does; these functions reproduce those conversions exactly for the values a condition can meet
(JSON values), so verdicts match GrowthBook's.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Final

__all__ = ["js_number", "js_number_to_string", "padded_version", "padded_version_text"]

# ECMAScript StrWhiteSpaceChar: WhiteSpace (incl. Zs) and LineTerminator
_JS_SPACE: Final = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_DECIMAL: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_RADIX: Final = {
    "0x": (16, re.compile(r"[0-9a-fA-F]+")),
    "0o": (8, re.compile(r"[0-7]+")),
    "0b": (2, re.compile(r"[01]+")),
}


def js_number(text: str) -> float:
    """`Number(text)` as JavaScript computes it (NaN when the text is not a number literal).

    Surrounding whitespace is ignored, an empty or blank string is 0, `Infinity` (signed) is infinite,
    `0x` / `0o` / `0b` prefixes (unsigned) are integers in that radix; `1_000`, `inf`, `nan`, `1e`,
    `0x` and full-width digits are NaN (Python's `float()` accepts several of them)."""
    s = text.strip(_JS_SPACE)
    if not s:
        return 0.0
    if _DECIMAL.fullmatch(s):
        try:
            return float(s)
        except OverflowError:  # pragma: no cover (float() returns inf rather than raising)
            return math.inf if not s.startswith("-") else -math.inf
    if s in ("Infinity", "+Infinity"):
        return math.inf
    if s == "-Infinity":
        return -math.inf
    radix = _RADIX.get(s[:2].lower())
    if radix is not None and radix[1].fullmatch(s[2:]):
        value = int(s[2:], radix[0])
        return float(value) if value < 2**1024 else math.inf
    return math.nan


def js_number_to_string(value: int | float) -> str:
    """`String(value)` for a JavaScript number (ECMAScript Number::toString): integers print without a
    fraction, 1e21 and above (and below 1e-6) in exponent form such as `1e+21` or `1.5e-7`."""
    try:
        x = float(value)
    except OverflowError:
        x = math.inf if value > 0 else -math.inf
    if math.isnan(x):
        return "NaN"
    if x == 0:
        return "0"
    if x < 0:
        return "-" + js_number_to_string(-x)
    if math.isinf(x):
        return "Infinity"
    mantissa, _, exp = repr(x).partition("e")
    whole, _, fraction = mantissa.partition(".")
    padded = (whole + fraction).lstrip("0")
    digits = padded.rstrip("0")
    k = len(digits)
    n = int(exp or "0") - len(fraction) + len(padded)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return head + "e" + ("+" if n > 0 else "-") + str(abs(n - 1))


_VERSION_STRIP: Final = re.compile(r"(^v|\+.*$)")
_VERSION_SPLIT: Final = re.compile(r"[-.]")


def padded_version(value: Any) -> str:
    """GrowthBook's `paddedVersionString`: a version made comparable as a plain string.

    A number is first written as JavaScript writes it; anything else that is not a non-empty string
    (null, MISSING, a boolean, an array) is "0". A leading `v` and `+build` metadata are dropped, the
    version is split on `.` and `-`, a version of exactly three parts gets a `~` part (so `1.0.0` sorts
    after its pre-releases `1.0.0-beta`), and numeric parts are left-padded to five characters (so
    `9` sorts before `10`)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = js_number_to_string(value)
    if not value or not isinstance(value, str):
        value = "0"
    return padded_version_text(value)


@lru_cache(maxsize=4096)
def padded_version_text(text: str) -> str:
    """`padded_version` of a non-empty string (memoized: the versions a condition meets are few)."""
    parts = _VERSION_SPLIT.split(_VERSION_STRIP.sub("", text))
    if len(parts) == 3:
        parts.append("~")
    # JavaScript's /^[0-9]+$/ (ASCII digits only; str.isdigit would take other scripts' digits too)
    return "-".join(part.rjust(5, " ") if part.isascii() and part.isdigit() else part for part in parts)
