"""Tokenizing a chat from the pieces it had last turn.

An agent resends its whole conversation every turn, so the engine tokenizes thousands of tokens
again for a few new ones (8 ms for ~3,500 tokens on the GPU bench's host, growing with the
history). A Hugging Face tokenizer splits its input at its added tokens before anything else and
encodes each piece between them on its own; a rendered chat is mostly such pieces (`<|im_start|>`
role text `<|im_end|>`), and all but the last few are the same as last turn. So the text is split
at the special tokens, and each piece's ids are kept (an LRU by the piece's text). This equals
`tokenizer.encode(text, add_special_tokens=False)` when the special tokens match literally: not
normalized, no stripping of neighbouring spaces, no whole-word rule, none containing another.
`for_tokenizer` returns None for a tokenizer that does not qualify, and the engine encodes whole.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

# Characters of kept pieces (each with its ids): an agent's history is a few hundred pieces, but
# a piece can be a whole pasted document, so the bound is on their text, not their number.
CHARS_KEPT = 8 << 20


class SegmentEncoder:
    """`encode(text)` from kept pieces; any thread may call it."""

    def __init__(
        self,
        tokenizer: Any,
        specials: list[str],
        kept_chars: int = CHARS_KEPT,
        special_ids: Iterable[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._special_ids = frozenset(special_ids)
        # longest first, so that a token that is a prefix of another never wins (none contains
        # another, see for_tokenizer, but the order is also what the tokenizer's trie does)
        alternatives = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
        self._split = re.compile(f"({alternatives})")
        self._kept: OrderedDict[str, list[int]] = OrderedDict()
        self._chars = 0  # of the kept pieces
        self._max_chars = kept_chars
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece:
                ids += self._piece(piece)
        return ids

    def _piece(self, piece: str) -> list[int]:
        with self._lock:
            ids = self._kept.get(piece)
            if ids is not None:
                self._kept.move_to_end(piece)
                self.hits += 1
                return ids
        ids = list(self._tokenizer.encode(piece, add_special_tokens=False))
        with self._lock:
            self.misses += 1
        self._keep(piece, ids)
        return ids

    def _keep(self, piece: str, ids: list[int]) -> None:
        with self._lock:
            if len(piece) <= self._max_chars // 4 and piece not in self._kept:
                self._kept[piece] = ids
                self._chars += len(piece)
                while self._chars > self._max_chars:
                    self._chars -= len(self._kept.popitem(last=False)[0])

    def seed(self, ids: Iterable[int]) -> int:
        """Keep the pieces of a token sequence that this process never encoded: a cached
        prefix read from disk at load, whose conversation's next turn sends that text again
        (a restarted server's first agent turn encoded its ~3,600 tokens whole: 5.8 ms here
        against 0.7-1.0 for a warm turn). Each run of ids between special tokens is decoded,
        and kept only where encoding the text gives the run back: a kept piece is what
        `encode` would have kept. Returns how many pieces were added."""
        added = 0
        run: list[int] = []
        for i in [*ids, None]:
            if i is not None and i not in self._special_ids:
                run.append(i)
                continue
            if run:
                added += self._seed_piece(run)
            if i is not None:  # a special token is a piece of its own
                added += self._seed_piece([i])
            run = []
        return added

    def _seed_piece(self, run: list[int]) -> int:
        text = self._tokenizer.decode(
            run, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        with self._lock:
            if text in self._kept:
                return 0
        if list(self._tokenizer.encode(text, add_special_tokens=False)) != run:
            return 0  # not a whole piece (an entry cut mid-text), or text that encodes otherwise
        self._keep(text, run)
        return 1


def for_tokenizer(tokenizer: Any) -> SegmentEncoder | None:
    """A SegmentEncoder for a Hugging Face tokenizer whose special tokens split text literally,
    else None."""
    added = getattr(tokenizer, "added_tokens_decoder", None)
    if not isinstance(added, dict) or getattr(tokenizer, "split_special_tokens", False):
        return None
    tokens = list(added.values())
    specials = [t.content for t in tokens if getattr(t, "special", False)]
    if not specials:
        return None
    for t in tokens:
        literal = not (t.lstrip or t.rstrip or t.single_word)
        if t.content in specials and (not literal or t.normalized):
            return None
        # an added token that contains a special one (or the other way round) would be matched
        # differently by the tokenizer's longest-match trie than by a split at the special one
        if any(s != t.content and (s in t.content or t.content in s) for s in specials):
            return None
    special_ids = [i for i, t in added.items() if t.content in specials]
    encoder = SegmentEncoder(tokenizer, specials, special_ids=special_ids)
    # Some pre-tokenizers treat the input's first piece apart (a Metaspace "prepend first"):
    # pieces encoded alone would differ there. One probe with the specials in mid-text decides.
    probe = "".join(f"word{i}\n{s}next {i}{s} after\n" for i, s in enumerate(specials[:4]))
    if encoder.encode(probe) != list(tokenizer.encode(probe, add_special_tokens=False)):
        return None
    encoder._kept.clear()
    encoder._chars = encoder.hits = encoder.misses = 0
    return encoder
