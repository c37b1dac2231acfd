"""Benchmark: KANJIDIC2 meanings for every KanjiVG character, one SQL query vs. one jamdict lookup each.

``trainables.data.kanji.kanjidic_meanings`` reads jamdict's KANJIDIC2 tables in one query; the documented
way is ``Jamdict().kd2.get_char(c).meanings(english_only=True)`` per character. Both are timed on the same
characters and checked to give the same meanings.

    python benchmarks/kanjidic_lookup.py              # all ~6.7k KanjiVG base characters
    python benchmarks/kanjidic_lookup.py --limit 500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jamdict import Jamdict

from trainables.data.kanji import kanjidic_meanings, kanjivg_files


def per_character(characters: list[str]) -> dict[str, tuple[str, ...]]:
    jam = Jamdict()
    found = {}
    for character in characters:
        entry = jam.kd2.get_char(character)
        meanings = tuple(m.strip() for m in entry.meanings(english_only=True) if m.strip()) if entry else ()
        if meanings:
            found[character] = meanings
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N characters")
    args = parser.parse_args(argv)
    characters = sorted(kanjivg_files())[: args.limit]

    started = time.perf_counter()
    one_query = kanjidic_meanings(characters)
    t_query = time.perf_counter() - started
    started = time.perf_counter()
    lookups = per_character(characters)
    t_lookups = time.perf_counter() - started

    same = one_query == lookups
    print(f"KANJIDIC2 English meanings for {len(characters)} KanjiVG characters ({len(one_query)} have some)")
    print(f"  {'variant':34s}{'seconds':>10s}")
    print(f"  {'jamdict get_char per character':34s}{t_lookups:10.3f}")
    print(f"  {'one SQL query (kanjidic_meanings)':34s}{t_query:10.3f}")
    print(f"  ratio per-character / one query: {t_lookups / t_query:.0f}x; same meanings: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
