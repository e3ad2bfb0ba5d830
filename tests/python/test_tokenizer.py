"""The native byte-level BPE tokenizer against the independent references: the
`tokenizers` library (tokenizer.json with a RobertaProcessing post-processor)
and transformers' RobertaTokenizerFast (vocab.json + merges.txt), on generated C
code with tabs, CRLF, non-ASCII identifiers and strings, very long lines, empty
texts, numbers, operators and comments; with and without truncation; with
UniXcoder-style added special tokens; str and bytes input."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import AddedToken, ByteLevelBPETokenizer
from tokenizers import Tokenizer as ReferenceTokenizer
from tokenizers.processors import RobertaProcessing
from transformers import RobertaTokenizerFast

import enstack

try:
    from enstack.data import Tokenizer
except ImportError:
    from enstack._C.data import Tokenizer

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
UNIXCODER_TOKENS = ["<encoder-only>", "<decoder-only>", "<encoder-decoder>", "<mask0>", "<mask1>"]

# --- a generator of C-like functions ------------------------------------------

IDENTS = ["data", "buffer", "i", "len", "größe", "数据", "переменная", "naïve", "x1", "_tmp", "ptr", "café", "Ωmega",
          "n٣", "élan", "ǅx"]
TYPES = ["int", "char *", "size_t", "unsigned long", "wchar_t", "void *", "struct node *", "double"]
OPS = ["+", "-", "*", "/", "%", "<<", ">>", "&&", "||", "==", "!=", "<=", ">=", "->", "++", "--", "+=", "::", "...",
       "&", "|", "^", "~", "!", "<", ">"]
STRINGS = ["Hello, world!", "Ünïcödé ✓", "日本語のテキスト", "emoji 🎉🔥 test", "tab\\tnewline\\n", "don't stop",
           "it's OK", "we're here", "they've", "I'm", "you'll", "he'd", "'S caps 'LL", "  two  spaces  ",
           "\u00a0nbsp\u00a0", "ideographic\u3000space", "zero\u200bwidth", "combining e\u0301", "arabic ٠١٢٣",
           "<s>", "</s>", "<mask>", " <mask> ", "<pad><unk>", "\x1c\x1f controls \x7f"]
COMMENTS = ["// TODO: fix this", "/* multi\n   line comment */", "// don't overflow the buffer's end", "/* ñ ü é */",
            "//\tTabbed\tcomment", "// numbers 123 456.789 0x1F 1e-9", "/*   */"]
NOISE = "abc XYZ 09 \t\n\r'!@#$%^&*()_+-=[]{};:\",.<>/?\\|`~é中🎉\u0301\u00a0\u2028"


def _expr(r: random.Random, depth: int = 0) -> str:
    if depth > 2 or r.random() < 0.35:
        c = r.random()
        if c < 0.45:
            return r.choice(IDENTS)
        if c < 0.75:
            return str(r.choice([0, 1, 7, 10, 255, 65536, 123456789, -1, 3.14, 1e-9, 2 ** 31 - 1]))
        return hex(r.randrange(1 << 32))
    if r.random() < 0.75:
        return f"{_expr(r, depth + 1)} {r.choice(OPS)} {_expr(r, depth + 1)}"
    return f"({_expr(r, depth + 1)})"


def _statement(r: random.Random) -> str:
    c = r.random()
    if c < 0.25:
        return f"{r.choice(IDENTS)} = {_expr(r)};"
    if c < 0.4:
        return f'printf("{r.choice(STRINGS)}", {r.choice(IDENTS)});'
    if c < 0.5:
        return r.choice(COMMENTS)
    if c < 0.6:
        return f"if ({_expr(r)}) {{ return {_expr(r)}; }}"
    if c < 0.7:
        return f"for (i = 0; i < {r.randrange(100)}; i++) {r.choice(IDENTS)}[i] = '{r.choice('a0xä')}';"
    if c < 0.72:  # a very long line
        return "v" * r.randrange(100, 1500) + " = " + " + ".join(str(r.randrange(10 ** 6)) for _ in range(60)) + ";"
    if c < 0.8:  # whitespace runs before a word
        return "".join(r.choice(" \t\r\n\u00a0\u3000\x0b\x0c") for _ in range(r.randrange(1, 8))) + r.choice(IDENTS)
    if c < 0.9:
        return f"{r.choice(TYPES)} {r.choice(IDENTS)} = {_expr(r)};"
    return "".join(r.choice(NOISE) for _ in range(r.randrange(1, 30)))


def c_function(r: random.Random) -> str:
    c = r.random()
    if c < 0.02:
        return ""
    if c < 0.04:
        return r.choice([" ", "\n", "\t", "   x", "'s", "'", "a'", "  ", "\u00a0", "\r\n\r\n", "0", "é"])
    newline = "\r\n" if r.random() < 0.2 else "\n"
    indent = "\t" if r.random() < 0.3 else " " * r.choice([2, 4, 8])
    lines = [f"{r.choice(TYPES)} {r.choice(IDENTS)}_{r.randrange(1000)}({r.choice(TYPES)} {r.choice(IDENTS)})", "{"]
    lines += [indent * r.randrange(1, 3) + _statement(r) for _ in range(r.randrange(0, 12))]
    lines.append("}")
    text = newline.join(lines)
    return text + r.choice(["", "", "", "\n", "  ", "\n\n\n", " \t "])


def c_corpus(n: int, seed: int) -> list[str]:
    r = random.Random(seed)
    return [c_function(r) for _ in range(n)]


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return c_corpus(10_000, seed=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A byte-level BPE trained by `tokenizers`, saved both ways: vocab.json + merges.txt
    (with the tokenizer_config.json transformers writes) and tokenizer.json."""
    reference = ByteLevelBPETokenizer()
    reference.train_from_iterator(c_corpus(2000, seed=1), vocab_size=3000, min_frequency=2,
                                  special_tokens=SPECIALS, show_progress=False)
    # RoBERTa's <mask> takes the spaces before it.
    reference.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    files_dir = tmp_path_factory.mktemp("vocab_files")
    reference.save_model(str(files_dir))
    decoder = {str(i): {"content": s, "lstrip": s == "<mask>", "rstrip": False, "normalized": False,
                        "single_word": False, "special": True} for i, s in enumerate(SPECIALS)}
    (files_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "RobertaTokenizer", "added_tokens_decoder": decoder}))
    json_dir = tmp_path_factory.mktemp("tokenizer_json")
    reference.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    reference.save(str(json_dir / "tokenizer.json"))
    return files_dir, json_dir


def reference_ids(json_path, texts, max_length):
    tok = ReferenceTokenizer.from_file(str(json_path))
    if max_length is not None:
        tok.enable_truncation(max_length)
    return [e.ids for e in tok.encode_batch(texts)]


def assert_same_ids(ours, expected, texts):
    assert len(ours) == len(expected)
    bad = [i for i, (a, b) in enumerate(zip(ours, expected)) if a != b]
    assert not bad, (f"{len(bad)} of {len(texts)} texts differ; first: {texts[bad[0]]!r}\n"
                     f"ours:     {ours[bad[0]]}\nexpected: {expected[bad[0]]}")


# --- parity ----------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [None, 64])
def test_tokenizer_json_matches_tokenizers(trained, corpus, max_length):
    _, json_dir = trained
    ours = Tokenizer.from_pretrained(str(json_dir)).encode_batch(corpus, max_length=max_length)
    assert_same_ids(ours, reference_ids(json_dir / "tokenizer.json", corpus, max_length), corpus)


@pytest.mark.parametrize("max_length", [None, 64])
def test_vocab_files_match_transformers(trained, corpus, max_length):
    files_dir, _ = trained
    reference = RobertaTokenizerFast.from_pretrained(str(files_dir))
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    expected = reference(corpus, **kwargs)["input_ids"]
    ours = Tokenizer.from_pretrained(str(files_dir)).encode_batch(corpus, max_length=max_length, num_threads=2)
    assert_same_ids(ours, expected, corpus)


def test_short_max_lengths_and_single_encode(trained, corpus):
    files_dir, json_dir = trained
    texts = corpus[:300]
    reference = RobertaTokenizerFast.from_pretrained(str(files_dir))
    ours = Tokenizer.from_pretrained(str(json_dir))
    for max_length in [2, 3, 5, 512]:
        expected = reference(texts, truncation=True, max_length=max_length)["input_ids"]
        assert_same_ids([ours.encode(t, max_length=max_length) for t in texts], expected, texts)
    assert ours.encode("") == [0, 2]
    assert ours.encode("", max_length=2) == [0, 2]


def test_both_formats_and_thread_counts_agree(trained, corpus):
    files_dir, json_dir = trained
    from_files, from_json = Tokenizer.from_pretrained(str(files_dir)), Tokenizer.from_pretrained(str(json_dir))
    texts = corpus[:2000]
    expected = from_json.encode_batch(texts, num_threads=1)
    for threads in [0, 2, 4]:
        assert from_files.encode_batch(texts, num_threads=threads) == expected
    assert [from_files.encode(t) for t in texts[:200]] == expected[:200]
    assert from_files.identity == from_json.identity  # the ids, not the file format, decide it
    for tok in (from_files, from_json):
        assert (tok.kind, tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == ("bpe", 0, 1, 2, 3)
        assert tok.vocab_size == len(json.loads((files_dir / "vocab.json").read_text()))
        assert len(tok.identity) == 16 and "bpe" in repr(tok)


def test_unixcoder_added_special_tokens_are_split_out(trained, corpus, tmp_path):
    """Extra special tokens as UniXcoder has them, in tokenizer.json's added_tokens
    (checked against tokenizers) and in vocab.json's directory (against transformers)."""
    files_dir, json_dir = trained
    reference = ReferenceTokenizer.from_file(str(json_dir / "tokenizer.json"))
    reference.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in UNIXCODER_TOKENS])
    (tmp_path / "json").mkdir()
    reference.save(str(tmp_path / "json" / "tokenizer.json"))
    r = random.Random(5)
    texts = [t[:k] + r.choice(UNIXCODER_TOKENS + [" <mask0> ", "<mask0><mask1>", "<mask>", "\t<encoder-only>\n"])
             + t[k:] for t in corpus[:1500] for k in [r.randrange(len(t) + 1)]]
    texts += ["<encoder-only>", "<mask0 >", "<<mask0>>", "a<mask1>b", "<encoder-only><s></s>"]
    ours = Tokenizer.from_pretrained(str(tmp_path / "json"))
    for max_length in [None, 32]:
        assert_same_ids(ours.encode_batch(texts, max_length=max_length),
                        reference_ids(tmp_path / "json" / "tokenizer.json", texts, max_length), texts)

    # transformers (5.x) registers extra tokens from tokenizer_config.json's added_tokens_decoder.
    vocab = json.loads((files_dir / "vocab.json").read_text())
    config = json.loads((files_dir / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"].update({
        str(len(vocab) + i): {"content": t, "lstrip": False, "rstrip": False, "normalized": False,
                              "single_word": False, "special": True} for i, t in enumerate(UNIXCODER_TOKENS)})
    (tmp_path / "files").mkdir()
    for name in ["vocab.json", "merges.txt"]:
        (tmp_path / "files" / name).write_bytes((files_dir / name).read_bytes())
    (tmp_path / "files" / "tokenizer_config.json").write_text(json.dumps(config))
    expected = RobertaTokenizerFast.from_pretrained(str(tmp_path / "files"))(texts)["input_ids"]
    assert_same_ids(Tokenizer.from_pretrained(str(tmp_path / "files")).encode_batch(texts), expected, texts)


def test_bytes_input_and_invalid_utf8(trained, corpus):
    tok = Tokenizer.from_pretrained(str(trained[1]))
    for text in corpus[:200]:
        assert tok.encode(text.encode("utf-8")) == tok.encode(text)
    assert tok.encode_batch([t.encode("utf-8") for t in corpus[:50]]) == tok.encode_batch(corpus[:50])
    r = random.Random(11)
    blobs = [bytes(r.randrange(256) for _ in range(r.randrange(200))) for _ in range(500)]
    blobs += [b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"abc\xe2\x82", b"\x80" * 10]
    first = tok.encode_batch(blobs, num_threads=2)
    assert first == [tok.encode(b) for b in blobs]
    assert all(ids[0] == 0 and ids[-1] == 2 and len(ids) >= 2 + (len(b) > 0) for ids, b in zip(first, blobs))


def test_errors_are_typed(trained, tmp_path):
    tok = Tokenizer.from_pretrained(str(trained[1]))
    with pytest.raises(enstack.ConfigError, match="max_length"):
        tok.encode("int x;", max_length=1)
    with pytest.raises(TypeError):
        tok.encode(42)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(enstack.DataError, match="config.json"):
        Tokenizer.from_pretrained(str(tmp_path))
    with pytest.raises(enstack.DataError):
        Tokenizer.from_pretrained(str(tmp_path / "missing"))
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(enstack.DataError, match="merge"):
        Tokenizer.from_pretrained(str(tmp_path))
