"""Word boundaries for whole-word masking (data.whole_word_mask): which tokens start a word.

A word is what the tokenizer's pre-tokenizer splits off, so a WordPiece word and its `##` pieces
(or a byte-level BPE word and its pieces) are one word. Chinese has no spaces: BERT's normalizer
makes every ideograph its own token and its own pre-token word, so there the words come from a
segmenter (jieba), as Chinese-BERT-wwm and MacBERT find them, while the tokens stay characters.
Computed where documents are tokenized (the offsets are at hand there) and packed next to the ids
as a `word_starts` column; the masking in the workers reads only that column.
"""

from __future__ import annotations

import functools
import logging
import re

import numpy as np

from electra_ray.errors import UserError

# CJK ideographs as BERT's tokenizer (and tokenizers' BertNormalizer) recognise them: the blocks of
# BasicTokenizer._is_chinese_char. Kana and Hangul are not among them (BERT splits them like Latin).
_CJK = (
    "\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f"
)
_HAS_CJK = re.compile(f"[{_CJK}]")
_IS_CJK = re.compile(f"[{_CJK}]+")


def word_starts(encoding, text: str) -> np.ndarray:
    """[n_tokens] int8 for one `tokenizers.Encoding` of `text` (no special tokens added): 1 where a
    token starts a word, 0 where it continues the previous token's word (a `##` piece, or the next
    character of a segmenter's Chinese word)."""
    words = np.array([-1 if w is None else w for w in encoding.word_ids], dtype=np.int64)
    starts = np.ones(len(words), dtype=bool)
    starts[1:] = (words[1:] != words[:-1]) | (words[1:] < 0)
    if len(words) > 1 and _HAS_CJK.search(text):
        starts[1:] &= ~_same_segmenter_word(encoding.offsets, text)
    return starts.astype(np.int8)


def _same_segmenter_word(offsets: list[tuple[int, int]], text: str) -> np.ndarray:
    """[n_tokens - 1] bool: token i + 1 and token i are CJK characters inside one word of the segmenter."""
    segment = np.full(len(text) + 1, -1, dtype=np.int64)  # the segmenter's word of each character
    for index, (_, start, end) in enumerate(_segmenter().tokenize(text)):
        segment[start:end] = index
    starts = np.array([start for start, _ in offsets], dtype=np.int64)
    cjk = np.array([bool(_IS_CJK.fullmatch(text[s:e])) for s, e in offsets])
    word = np.where(cjk, segment[np.minimum(starts, len(text))], -1)
    return cjk[1:] & cjk[:-1] & (word[1:] == word[:-1]) & (word[1:] >= 0)


@functools.lru_cache(maxsize=1)
def _segmenter():
    # Imported only for Chinese text: an optional dependency (the `zh` extra), ~1 s to load its dictionary.
    try:
        import jieba
    except ImportError:
        raise UserError(
            "data.whole_word_mask on Chinese text needs the jieba segmenter: pip install jieba "
            "(or pip install 'electra-ray[zh]')"
        ) from None
    jieba.setLogLevel(logging.WARNING)  # not "Building prefix dict..." in every Ray Data task's log
    segmenter = jieba.Tokenizer()
    segmenter.initialize()
    return segmenter


def check_segmenter(tokenizer) -> None:
    """On the driver, before the data tasks start: a tokenizer that knows Chinese characters will
    meet Chinese text, so whole-word masking needs the segmenter; a one-line error if it is missing."""
    if any(_IS_CJK.fullmatch(token) for token in tokenizer.get_vocab()):
        _segmenter()
