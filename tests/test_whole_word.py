"""Whole-word masking (data.whole_word_mask) on real English and Chinese text, no Ray: the word starts
found at tokenize time, packed beside their tokens, and the masking that selects whole words."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from electra_ray.config import SHIPPED_CORPUS, load_config
from electra_ray.data import mask_batch, tokenize_and_pack, tokenizer_from_json
from electra_ray.masking import mask_tokens
from electra_ray.tokenizer import train_tokenizer

SEQ_LEN = 128


@pytest.fixture(scope="module")
def english(tokenizer_json):
    texts = pq.read_table(SHIPPED_CORPUS, columns=["text"]).slice(100, 5)["text"].to_pylist()
    return tokenizer_json, texts


@pytest.fixture(scope="module")
def chinese(chinese_lines):
    tokenizer = train_tokenizer(chinese_lines[:3000], 4000)
    return tokenizer.to_str(), chinese_lines[3000:4500]


def whole_word_config(**values):
    return load_config(None, ["data.whole_word_mask=true", *[f"data.{k}={v}" for k, v in values.items()]]).data


def words_of(ids, starts, special):
    """Each row's words as lists of positions (a word: a start and the non-special tokens after it)."""
    rows = []
    for row_ids, row_starts in zip(ids, starts):
        words, current = [], None
        for position, (token, start) in enumerate(zip(row_ids, row_starts)):
            if token in special or position == 0:
                current = None
                continue
            if start or current is None:
                current = [position]
                words.append(current)
            else:
                current.append(position)
        rows.append(words)
    return rows


def selected_positions(batch):
    selected = np.zeros(batch.original_ids.shape, dtype=bool)
    rows, slots = np.nonzero(batch.weights)
    selected[rows, batch.positions[rows, slots]] = True
    return selected


@pytest.mark.parametrize("packing", ["concatenate", "segments"])
def test_english_word_starts_are_the_vocabulary_s_non_hash_tokens_beside_their_tokens(english, packing):
    tokenizer_json, texts = english
    columns = tokenize_and_pack(texts, tokenizer_json, SEQ_LEN, packing, whole_word_mask=True)
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    ids, starts = columns["input_ids"], columns["word_starts"]
    assert starts.dtype == np.int8 and starts.shape == ids.shape
    is_special = np.isin(ids, [special[t] for t in ("[CLS]", "[SEP]", "[PAD]")])  # [UNK] stands for text
    pieces = np.vectorize(lambda i: tokenizer.id_to_token(int(i)).startswith("##"))(ids)
    # Packed by the same layout: 0 on [CLS] [SEP] [PAD], and on the text's tokens exactly the ## rule.
    assert (starts[is_special] == 0).all()
    assert (starts[~is_special] == ~pieces[~is_special]).all()
    assert pieces[~is_special].sum() > 100  # real text: many words of several pieces
    assert (columns["input_ids"] == tokenize_and_pack(texts, tokenizer_json, SEQ_LEN, packing)["input_ids"]).all()


def test_chinese_tokens_are_characters_and_words_come_from_the_segmenter(chinese):
    import jieba

    tokenizer_json, texts = chinese
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    text = texts[0]
    encoding = tokenizer.encode(text, add_special_tokens=False)
    columns = tokenize_and_pack([text], tokenizer_json, 512, whole_word_mask=True)
    ids, starts = columns["input_ids"][0], columns["word_starts"][0]
    n = len(encoding.ids)
    assert (ids[1 : n + 1] == encoding.ids).all()
    # Every CJK character is its own token; the words are jieba's words of the sentence.
    tokens = encoding.tokens
    cjk = [len(t) == 1 and "\u4e00" <= t <= "\u9fff" for t in tokens]
    assert sum(cjk) > 0.8 * len(tokens)
    jieba_words = [w for w, _, _ in jieba.tokenize(text)]
    multi = [w for w in jieba_words if len(w) > 1 and all("\u4e00" <= c <= "\u9fff" for c in w)]
    assert multi, jieba_words
    rebuilt, current = [], ""
    for token, start, is_cjk in zip(tokens, starts[1 : n + 1], cjk):
        if start and current:
            rebuilt.append(current)
            current = ""
        current += token if is_cjk else f" {token} "
    rebuilt.append(current)
    for word in multi:
        assert word in rebuilt, (word, rebuilt)


@pytest.mark.parametrize("language", ["english", "chinese"])
@pytest.mark.parametrize("packing", ["concatenate", "segments"])
def test_every_selected_word_is_masked_whole_at_15_percent_of_tokens(request, language, packing):
    tokenizer_json, texts = request.getfixturevalue(language)
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    columns = tokenize_and_pack(texts, tokenizer_json, SEQ_LEN, packing, whole_word_mask=True)
    cfg = whole_word_config(mask_token_prob=0.85, random_token_prob=0.0)
    specials = set(special.values())
    rng = np.random.default_rng(0)
    selected_total = candidates_total = 0
    long_words = 0
    for _ in range(3):  # masked afresh, as every epoch is
        batch = mask_batch(
            columns["input_ids"],
            cfg,
            special,
            tokenizer.get_vocab_size(),
            rng,
            columns.get("token_type_ids"),
            columns["word_starts"],
        )
        selected = selected_positions(batch)
        is_special = np.isin(batch.original_ids, list(specials))
        assert not (selected & is_special).any() and not selected[:, 0].any()
        for row, words in enumerate(words_of(batch.original_ids, columns["word_starts"], specials)):
            for word in words:
                chosen = selected[row, word]
                assert chosen.all() or not chosen.any()  # whole words only
                masked = batch.input_ids[row, word] == special["[MASK]"]
                assert masked.all() or not masked.any()  # [MASK] or kept per word
                long_words += len(word) > 1 and chosen.all()
        selected_total += selected.sum()
        candidates_total += (~is_special[:, 1:]).sum()
        # The positions are the selected tokens; the used slots never exceed the static count.
        assert batch.weights.sum() == selected.sum()
    assert long_words > 50  # multi-token words were selected, and whole
    assert selected_total / candidates_total == pytest.approx(0.15, abs=0.005)


def test_bert_split_is_made_per_word():
    rng = np.random.default_rng(3)
    ids = rng.integers(5, 1000, size=(400, 64))
    ids[:, 0], ids[:, -1] = 2, 3
    starts = (rng.random(ids.shape) < 0.4).astype(np.int8)  # words of 2-3 tokens on average
    batch = mask_tokens(
        ids,
        rng,
        mask_prob=0.15,
        mask_token_prob=0.8,
        random_token_prob=0.1,
        mask_id=4,
        pad_id=0,
        special_ids=[0, 1, 2, 3, 4],
        vocab_size=1000,
        word_starts=starts,
    )
    selected = selected_positions(batch)
    outcomes = {"mask": 0, "random": 0, "keep": 0}
    for row, words in enumerate(words_of(ids, starts, {0, 1, 2, 3, 4})):
        for word in words:
            if not selected[row, word].any():
                assert (batch.input_ids[row, word] == ids[row, word]).all()
                continue
            assert selected[row, word].all()
            got, was = batch.input_ids[row, word], ids[row, word]
            if (got == 4).all():
                outcomes["mask"] += 1
            elif (got == was).all():
                outcomes["keep"] += 1
            else:  # random tokens throughout (one may draw its own token back: 1 in 995)
                assert not (got == 4).any() and (got != was).sum() >= len(word) - 1
                outcomes["random"] += 1
    total = sum(outcomes.values())
    assert outcomes["mask"] / total == pytest.approx(0.8, abs=0.03)
    assert outcomes["random"] / total == pytest.approx(0.1, abs=0.03)


def test_a_word_cut_by_a_special_token_restarts_after_it_and_overshooting_words_are_passed_over():
    # [CLS] a ##b [SEP] ##c ##d e [SEP]: "##c ##d" opens the second document's part (a word cut by
    # the row start or a [SEP] is its own word here), and a word longer than the budget never fits.
    ids = np.array([[2, 10, 11, 3, 12, 13, 14, 3]])
    starts = np.array([[0, 1, 0, 0, 0, 0, 1, 0]])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        batch = mask_tokens(
            ids,
            rng,
            mask_prob=0.5,
            mask_token_prob=1.0,
            random_token_prob=0.0,
            mask_id=4,
            pad_id=0,
            special_ids=[0, 1, 2, 3, 4],
            vocab_size=100,
            word_starts=starts,
        )
        seen.add(tuple(np.nonzero(selected_positions(batch)[0])[0]))
    # 5 candidates at 0.5: a budget of 2 or 3 tokens; the words are (1, 2), (4, 5), (6). A budget of 2
    # that draws (6) first is left 1 short: no other word fits (BERT's rule, a rare shortfall).
    assert seen == {(1, 2), (4, 5), (1, 2, 6), (4, 5, 6), (6,)}


def test_without_the_option_the_column_is_ignored(english):
    tokenizer_json, texts = english
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    columns = tokenize_and_pack(texts, tokenizer_json, SEQ_LEN, whole_word_mask=True)
    cfg = load_config(None, []).data
    a = mask_batch(columns["input_ids"], cfg, special, 2000, np.random.default_rng(1), None, columns["word_starts"])
    b = mask_batch(columns["input_ids"], cfg, special, 2000, np.random.default_rng(1))
    assert (a.input_ids == b.input_ids).all() and (a.positions == b.positions).all()
