"""Words and terms for lexical matching, in one place: BM25 (the `bm25` routing score and the
`rag_bm25` baseline), the bridge sentence of two-hop routing (`hierarchy.hops`) and the words
the `compress` baseline keeps.

`words` lower-cases and splits at non-word characters; `terms` also stems each word with the
Snowball English stemmer (PyStemmer), as a search engine's English analyzer does, so that a
question's "work" meets a document's "works" and "designer" meets "designed".
"""

from __future__ import annotations

import functools
import re

# Function words: never what a question is about ("In which town does ...").
STOPWORDS = frozenset("""a an and are as at be been by did do does for from had has have how in is
it its of on or that the their there this to was were what when where which who whom whose why
will with""".split())


def words(text: str) -> list[str]:
    """Lower-cased word tokens (`\\w+`)."""
    return re.findall(r"\w+", text.lower())


@functools.lru_cache(maxsize=1)
def _stemmer():
    import Stemmer  # PyStemmer: the Snowball stemmers, compiled

    return Stemmer.Stemmer("english")


def stem(word: str) -> str:
    """The Snowball English stem of one lower-cased word ("works" -> "work")."""
    return _stemmer().stemWord(word)


def terms(text: str) -> list[str]:
    """Stemmed lower-cased word tokens: BM25's terms (stop words kept: BM25's idf weighs them)."""
    return _stemmer().stemWords(words(text))
