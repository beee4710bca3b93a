"""Train, save and load the WordPiece tokenizer (BERT-style; uncased, or cased with --cased).

    python -m electra_ray.tokenizer --input corpus.parquet --vocab-size 8192 --out DIR [--cased]

The saved directory loads with `transformers.AutoTokenizer.from_pretrained(DIR)` and
`ElectraTokenizerFast.from_pretrained(DIR)`; `tokenizer.json` in it is what the data pipeline uses.
Chinese, Japanese and Korean ideographs are one token each (BERT's handling), so a Chinese corpus
trains a character-level vocabulary. Any other Hugging Face tokenizer directory (data.tokenizer)
works if it has the five special tokens, under BERT's names or RoBERTa's (`special_tokens`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from electra_ray import storage
from electra_ray.cli import run_cli, verb_parser
from electra_ray.documents import iter_documents
from electra_ray.errors import UserError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # ids 0..4 in this order
# The roles of the five special tokens, by BERT's names (the keys of `special_ids` everywhere), and
# the spellings other tokenizer families give them: RoBERTa, XLM-R, BART, CamemBERT <s> </s> <pad>
# <mask> <unk>; XLNet <cls> <sep>; ALBERT <pad> <unk>. A tokenizer is read by its tokenizer.json
# alone on the workers, so each role is the first of its spellings that the vocabulary has; on the
# driver, read_tokenizer_json checks that against the directory's own special-token settings.
SPELLINGS = {
    PAD: (PAD, "<pad>"),
    UNK: (UNK, "<unk>"),
    CLS: (CLS, "<s>", "<cls>"),
    SEP: (SEP, "</s>", "<sep>"),
    MASK: (MASK, "<mask>"),
}
SETTINGS = {PAD: "pad_token", UNK: "unk_token", CLS: "cls_token", SEP: "sep_token", MASK: "mask_token"}


def train_tokenizer(texts: Iterable[str], vocab_size: int, cased: bool = False) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
    # BERT normalisation: clean control chars, put spaces around CJK ideographs (one token each,
    # as BERT's Chinese and multilingual models: a Chinese corpus gets a character vocabulary),
    # then, uncased, strip accents and lowercase; cased keeps both (BERT-cased's settings).
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=False if cased else None,  # None: strip when lowercasing
        lowercase=not cased,
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

    # The tokenizer's own spellings: naming [CLS] to one that has <s> would add a token the model has no row for.
    names = special_tokens(tokenizer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=names[UNK],
        pad_token=names[PAD],
        cls_token=names[CLS],
        sep_token=names[SEP],
        mask_token=names[MASK],
        model_max_length=model_max_length,
        do_lower_case=lowercases(tokenizer),
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
    check_special_tokens(tokenizer, special_token_settings(directory), path)
    if tokenizer.padding or tokenizer.truncation:
        # Saved for inference with a fixed length (the MiniLM package's pads and cuts every text to
        # 128): here packing decides lengths, and an export must not inherit it.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        text = tokenizer.to_str()
    return text


def special_tokens(tokenizer: Tokenizer) -> dict[str, str | None]:
    """Each role's token in this tokenizer (the first of its SPELLINGS in the vocabulary; None: none)."""
    vocabulary = tokenizer.get_vocab(with_added_tokens=True)
    return {role: next((t for t in spellings if t in vocabulary), None) for role, spellings in SPELLINGS.items()}


def special_ids(tokenizer: Tokenizer) -> dict[str, int | None]:
    """Each role's token id, keyed by BERT's names ("[PAD]", ...): the one place roles are mapped."""
    return {
        role: None if token is None else tokenizer.token_to_id(token)
        for role, token in special_tokens(tokenizer).items()
    }


def special_token_settings(directory: str) -> dict[str, str]:
    """The special tokens a Hugging Face tokenizer directory declares (tokenizer_config.json, then
    special_tokens_map.json over it, as transformers reads them): {"cls_token": "<s>", ...}. Absent
    files (our checkpoints keep only tokenizer.json) declare nothing."""
    settings: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = storage.join(directory, name)
        if not storage.exists(path):
            continue
        try:
            values = json.loads(storage.read_text(path))
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{path} is not JSON") from None
        for key in SETTINGS.values():
            value = values.get(key) if isinstance(values, dict) else None
            value = value.get("content") if isinstance(value, dict) else value  # AddedToken form
            if isinstance(value, str):
                settings[key] = value
    return settings


def check_special_tokens(tokenizer: Tokenizer, settings: dict[str, str], path: str) -> None:
    """A one-line error unless each of the five roles maps to a token of the vocabulary, and to the
    one the directory's settings name where they name one."""
    found = special_tokens(tokenizer)
    vocabulary = tokenizer.get_vocab(with_added_tokens=True)
    for role, key in SETTINGS.items():
        declared = settings.get(key)
        if declared is None or declared == found[role]:
            continue
        if declared not in vocabulary:
            raise UserError(f"tokenizer {path}: its settings name {key} {declared!r}, which its vocabulary lacks")
        raise UserError(
            f"tokenizer {path}: its settings name {key} {declared!r}; electra-ray maps {role} only to "
            f"{' or '.join(SPELLINGS[role])} (found {found[role]!r})"
        )
    missing = [" or ".join(SPELLINGS[role]) for role, token in found.items() if token is None]
    if missing:
        raise UserError(
            f"tokenizer {path} lacks the special tokens {', '.join(missing)}: ELECTRA needs "
            f"{' '.join(SPECIAL_TOKENS)} (or their RoBERTa-style equivalents) in its vocabulary"
        )


def lowercases(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer's normalizer lowercases (BertNormalizer(lowercase=True) or a Lowercase
    step): the do_lower_case an export declares."""

    def walk(node) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "Lowercase" or (node.get("type") == "BertNormalizer" and node.get("lowercase")):
                return True
            return any(walk(value) for value in node.values())
        return isinstance(node, list) and any(walk(value) for value in node)

    return walk(json.loads(tokenizer.to_str()).get("normalizer"))


class CountedTexts:
    """An iterator of texts that counts the non-empty ones it gave."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.count = iter(texts), 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.count += bool(text and text.strip())
            yield text


def main(argv: list[str] | None = None) -> None:
    parser = verb_parser("tokenizer", __doc__)
    parser.add_argument("--input", required=True, help="Parquet file, directory or s3:// prefix (one document per row)")
    parser.add_argument("--column", default="text", help="text column (default: text)")
    parser.add_argument("--vocab-size", type=int, default=30522, help="vocabulary size (default: 30522)")
    parser.add_argument("--out", required=True, help="output directory or s3:// prefix")
    parser.add_argument(
        "--cased", action="store_true", help="keep case and accents (BERT-cased); default: lowercase, strip accents"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier tokenizer at --out (only the files its manifest lists are removed)",
    )
    args = parser.parse_args(argv)

    def run():
        if args.vocab_size < len(SPECIAL_TOKENS) + 1:
            raise UserError(f"--vocab-size must be > {len(SPECIAL_TOKENS)} (the special tokens), got {args.vocab_size}")
        with storage.exclusive_output(args.out):  # a second tokenizer into the same --out is refused
            storage.check_output(args.out, "tokenizer", args.overwrite)  # before training: a refusal costs nothing
            documents = CountedTexts(iter_documents(args.input, args.column, "train", 0.0))  # all of it
            tokenizer = train_tokenizer(documents, args.vocab_size, args.cased)
            if not documents.count:
                raise UserError(f"no text in column {args.column!r} of {args.input}: every value is null or empty")
            with storage.staging_directory(args.out) as staging:
                save_tokenizer(tokenizer, staging)
                storage.publish_directory(staging, args.out, "tokenizer", args.overwrite)
        print(f"tokenizer: {args.out} ({tokenizer.get_vocab_size()} tokens)")

    run_cli(run)


if __name__ == "__main__":
    main()
