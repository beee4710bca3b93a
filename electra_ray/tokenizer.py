"""Train, save and load the WordPiece tokenizer (BERT-style, uncased).

    python -m electra_ray.tokenizer --input corpus.parquet --vocab-size 8192 --out DIR

The saved directory loads with `transformers.AutoTokenizer.from_pretrained(DIR)` and
`ElectraTokenizerFast.from_pretrained(DIR)`; `tokenizer.json` in it is what the data pipeline uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from electra_ray import storage
from electra_ray.cli import run_cli, verb_parser
from electra_ray.documents import iter_documents
from electra_ray.errors import UserError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # ids 0..4 in this order


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
    # BERT normalisation: clean control chars, put spaces around CJK characters (one token each),
    # strip accents and lowercase.
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, continuing_subword_prefix="##", show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1", special_tokens=[(CLS, cls_id), (SEP, sep_id)]
    )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out_dir: str, model_max_length: int = 512) -> None:
    # transformers 5 trap: BertTokenizerFast(vocab_file=...) saves a directory that reloads as a
    # 5-token tokenizer; wrapping the trained tokenizer object saves and reloads correctly.
    # Imported here: every Ray Data task imports this module (through data.py) and never saves a
    # tokenizer; transformers would add about a second to each of those processes' start.
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK,
        pad_token=PAD,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        model_max_length=model_max_length,
        do_lower_case=True,
    )
    os.makedirs(out_dir, exist_ok=True)
    wrapped.save_pretrained(out_dir)


def read_tokenizer_json(directory: str) -> str:
    """The tokenizer as JSON text: small, and what workers on any node rebuild it from. Checked
    here, on the driver, so that a file that is no tokenizer, or one without the five special
    tokens the objective needs, is a one-line error before Ray starts, not a crash in the workers."""
    path = storage.join(directory, "tokenizer.json")
    try:
        text = storage.read_published_text(directory, "tokenizer.json")
    except storage.StorageError as error:
        if not str(error).startswith("no tokenizer.json"):
            raise
        raise storage.StorageError(f"no tokenizer.json in tokenizer directory {directory}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a tokenizer file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a tokenizer: not UTF-8 text") from None
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as error:  # tokenizers raises a bare Exception for every parse failure
        raise UserError(f"{path} is not a tokenizer ({str(error).splitlines()[0][:200]})") from None
    missing = [token for token, id_ in special_ids(tokenizer).items() if id_ is None]
    if missing:
        raise UserError(
            f"tokenizer {path} lacks the special tokens {' '.join(missing)}: ELECTRA needs "
            f"{' '.join(SPECIAL_TOKENS)} in its vocabulary"
        )
    if tokenizer.padding or tokenizer.truncation:
        # Saved for inference with a fixed length (the MiniLM package's pads and cuts every text to
        # 128): here packing decides lengths, and an export must not inherit it.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        text = tokenizer.to_str()
    return text


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    return {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}


def main(argv: list[str] | None = None) -> None:
    parser = verb_parser("tokenizer", __doc__)
    parser.add_argument("--input", required=True, help="Parquet file, directory or s3:// prefix (one document per row)")
    parser.add_argument("--column", default="text", help="text column (default: text)")
    parser.add_argument("--vocab-size", type=int, default=30522, help="vocabulary size (default: 30522)")
    parser.add_argument("--out", required=True, help="output directory or s3:// prefix")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier tokenizer at --out (only the files its manifest lists are removed)",
    )
    args = parser.parse_args(argv)

    def run():
        if args.vocab_size < len(SPECIAL_TOKENS) + 1:
            raise UserError(f"--vocab-size must be > {len(SPECIAL_TOKENS)} (the special tokens), got {args.vocab_size}")
        storage.check_output(args.out, "tokenizer", args.overwrite)  # before training: a refusal costs nothing
        tokenizer = train_tokenizer(iter_documents(args.input, args.column, "train", 0.0), args.vocab_size)  # all of it
        with storage.staging_directory(args.out) as staging:
            save_tokenizer(tokenizer, staging)
            storage.publish_directory(staging, args.out, "tokenizer", args.overwrite)
        print(f"tokenizer: {args.out} ({tokenizer.get_vocab_size()} tokens)")

    run_cli(run)


if __name__ == "__main__":
    main()
