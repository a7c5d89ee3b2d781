""""Did you mean …": the closest valid spelling of a word the user mistyped (a verb, an option, a config key or value,
a selector, a profile, a simulated model). One rule everywhere: difflib's ratio, case-insensitive.

Pure: callers pass the words that are valid where the typo was made.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

CUTOFF = 0.6  # difflib's default: "stauts"/"status" 0.83, "al"/"all" 0.8, "a100"/"all" 0.29


def closest(word: str, candidates: Iterable[str], cutoff: float = CUTOFF) -> Optional[str]:
    """The candidate closest to `word` (as the candidate spells it), or None when none is close enough."""
    import difflib  # only when there is a typo: a valid config never pays for it

    by_folded: Dict[str, str] = {}
    for c in candidates:
        by_folded.setdefault(str(c).lower(), str(c))
    hits = difflib.get_close_matches(str(word).strip().lower(), list(by_folded), n=1, cutoff=cutoff)
    return by_folded[hits[0]] if hits else None


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = CUTOFF) -> str:
    """'did you mean "status"?' for the closest candidate, or "" (the caller's message then stands alone)."""
    hit = closest(word, candidates, cutoff)
    return f'did you mean "{hit}"?' if hit is not None and hit != word else ""


def appended(message: str, word: str, candidates: Iterable[str], cutoff: float = CUTOFF) -> str:
    """`message` with "; did you mean …?" after it where a candidate is close."""
    hint = did_you_mean(word, candidates, cutoff)
    return f"{message}; {hint}" if hint else message
