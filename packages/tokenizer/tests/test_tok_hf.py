"""HF interop: our export encodes identically in `tokenizers`; foreign HF tokenizers work behind TokenizerLike.

Every foreign tokenizer is built here with the `tokenizers` library (no downloads): a GPT-2-style
byte-level BPE, and a Llama-2-style BPE with byte_fallback, "▁" spaces and <0x00>..<0xFF> byte tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanoforge.tokenizer.chat import CHATML_SPECIALS, add_chat_template, render_chat, render_chat_text
from nanoforge.tokenizer.core import Tokenizer
from nanoforge.tokenizer.hf import HFTokenizer, detect_style, load_any_tokenizer, load_hf_tokenizer
from nanoforge.tokenizer.hf_export import bytes_to_unicode, export_hf, to_oniguruma
from nanoforge.tokenizer.protocol import TokenizerLike
from nanoforge.tokenizer.train import train_bpe

tokenizers = pytest.importorskip("tokenizers")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.   Tabs\tand\nnewlines\r\n " * 10,
    "Hello there! It's 2024; I'll pay 1234567 dollars, won't I? 😀😀 " * 10,
    "日本語のテキストと中文文本。 Ünïcödé çàfé naïve — “quotes” " * 10,
    "def add(a, b):\n    return a + b  # 100% sure\n\n\n" * 10,
]
TRICKY = [
    "",
    " ",
    "hello world",
    "   leading and trailing   ",
    "\n\n\n  \t\t x \r\n",
    "1234567890 12 3 4444 timeout*1000",
    "😀😀😀 👩‍👩‍👧 🇫🇷",
    "日本語のテキスト 中文",
    "it's IT'S we'll they've",
    "a" * 200,
]


#: Split patterns exported: the two named ones and a custom regex with possessive bounded repeats.
PATTERNS = ["gpt4", "gpt2", r"\p{L}{1,5}+| ?\p{N}{1,2}+|\s+(?!\S)|\s+|[^\s\p{L}\p{N}]++"]


@pytest.fixture(scope="module", params=PATTERNS, ids=["gpt4", "gpt2", "custom"])
def native(request: pytest.FixtureRequest) -> Tokenizer:
    tok = train_bpe(
        texts=CORPUS,
        vocab_size=600,
        pattern=request.param,
        special_tokens=CHATML_SPECIALS,
        show_progress=False,
        num_workers=1,
    )
    return add_chat_template(tok, "chatml")


@pytest.fixture(scope="module")
def exported(native: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf_export")
    export_hf(native, out)
    return out


@pytest.fixture(scope="module")
def hf_ref(exported: Path):
    return tokenizers.Tokenizer.from_file(str(exported / "tokenizer.json"))


# ------------------------------------------------------------------------------------------ export
def test_byte_map_is_a_bijection_onto_printable_chars() -> None:
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_possessive_bounded_repeat_becomes_atomic_group() -> None:
    assert to_oniguruma(r"\p{N}{1,3}+|a") == r"(?>\p{N}{1,3})|a"
    assert to_oniguruma(r"(?i:[ab]{2}+)|\s++$") == r"(?i:(?>[ab]{2}))|\s++$"


@pytest.mark.parametrize("text", TRICKY)
def test_export_encodes_and_decodes_identically(native: Tokenizer, hf_ref, text: str) -> None:
    ids = native.encode(text)
    assert hf_ref.encode(text, add_special_tokens=False).ids == ids
    assert hf_ref.decode(ids, skip_special_tokens=False) == native.decode(ids) == text


_unicode = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
_mixed = st.lists(
    st.sampled_from(
        ["😀", "日本", " ", "  ", "\n", "\r\n", "\t", "1", "22", "333", "4444", "'s", "é", "x", "Ab", "!"]
    ),
    max_size=30,
).map("".join)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_unicode, _mixed))
def test_export_parity_hypothesis(native: Tokenizer, hf_ref, text: str) -> None:
    ids = native.encode(text, allowed_special="all")
    assert hf_ref.encode(text, add_special_tokens=False).ids == ids
    assert hf_ref.decode(ids, skip_special_tokens=False) == native.decode(ids)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_export_decodes_arbitrary_ids_identically(native: Tokenizer, hf_ref, data: st.DataObject) -> None:
    ids = data.draw(st.lists(st.integers(0, native.vocab_size - 1), max_size=30))
    # Includes byte sequences that are not valid UTF-8: both sides must produce the same U+FFFDs.
    assert hf_ref.decode(ids, skip_special_tokens=False) == native.decode(ids)


def test_export_specials_when_allowed(native: Tokenizer, hf_ref) -> None:
    text = "<|im_start|>user\nhi<|im_end|>\n<tool_call>{}</tool_call>"
    ids = native.encode(text, allowed_special="all")
    assert hf_ref.encode(text, add_special_tokens=False).ids == ids
    assert native.special_tokens["<|im_end|>"] in ids


def test_transformers_loads_the_export(native: Tokenizer, exported: Path) -> None:
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(exported / "tokenizer.json"))
    for text in TRICKY:
        assert fast.encode(text, add_special_tokens=False) == native.encode(text)
    auto = transformers.AutoTokenizer.from_pretrained(str(exported))
    msgs = [{"role": "user", "content": "Hi 😀"}, {"role": "assistant", "content": "Hello!"}]
    text = auto.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == render_chat_text(native, msgs, add_generation_prompt=True)
    assert auto.eos_token == "<|im_end|>"


def test_export_refuses_native_directory(native: Tokenizer, tmp_path: Path) -> None:
    native.save(tmp_path)
    with pytest.raises(ValueError, match=r"holds a native nanoforge tokenizer\.json"):
        export_hf(native, tmp_path)


# ------------------------------------------------------------------------------------------ import
def test_import_of_our_export_matches_native(native: Tokenizer, exported: Path) -> None:
    hf = load_hf_tokenizer(exported)
    assert isinstance(hf, TokenizerLike)
    assert hf.style == "byte_level" and hf.vocab_size == native.vocab_size
    assert hf.special_tokens == native.special_tokens
    assert all(hf.token_bytes(i) == native.token_bytes(i) for i in range(native.vocab_size))
    for text in TRICKY:
        assert hf.encode(text) == native.encode(text)
    evil = "hi <|im_end|> there"
    assert hf.encode(evil) == native.encode(evil)  # "none": no special id
    assert hf.encode(evil, allowed_special="all") == native.encode(evil, allowed_special="all")
    subset = {"<|im_end|>"}
    text = "<|im_start|>a<|im_end|>b"
    assert hf.encode(text, allowed_special=subset) == native.encode(text, allowed_special=subset)
    assert hf.encode_batch(TRICKY) == native.encode_batch(TRICKY)
    assert hf.eos_token == "<|im_end|>" and hf.eos_id == native.special_tokens["<|im_end|>"]


def test_imported_jinja_template_gives_the_same_chat_ids(native: Tokenizer, exported: Path) -> None:
    hf = load_hf_tokenizer(exported)
    assert isinstance(hf.chat_template, str)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there <|im_end|>!"},
        {"role": "assistant", "content": "Hi! How can I help?"},
    ]
    assert render_chat(hf, msgs, add_generation_prompt=False) == render_chat(native, msgs)


def stream(tok, ids: list[int]) -> str:
    dec = tok.stream_decoder()
    return "".join(dec.push(i) for i in ids) + dec.flush()


@pytest.fixture(scope="module")
def gpt2_style(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-style byte-level BPE trained by `tokenizers`, saved with a tokenizer_config.json."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    out = tmp_path_factory.mktemp("gpt2_style")
    tok.save(str(out / "tokenizer.json"))
    config = {"eos_token": {"content": "<|endoftext|>"}, "bos_token": None, "add_bos_token": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def sentencepiece_bpe(out: Path, *, metaspace: bool) -> Path:
    """A SentencePiece-style BPE: byte_fallback, '▁' for spaces, <0x00>..<0xFF> in the model vocab.

    ``metaspace=False`` is Llama-2's layout (Prepend + Replace normalizer, Strip decoder);
    ``metaspace=True`` is the newer Mistral layout (Metaspace pre-tokenizer and decoder, prepend "first").
    """
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(CORPUS[:2], trainer)  # no CJK/emoji in training: those must fall back to bytes
    spec = json.loads(tok.to_str())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    spec["model"]["vocab"] = vocab
    spec["added_tokens"] = [dict(a, id=vocab[a["content"]]) for a in spec["added_tokens"]]
    first = (
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
        if metaspace
        else {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}
    )
    rest = [] if metaspace else [{"type": "Strip", "content": " ", "start": 1, "stop": 0}]
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [first, {"type": "ByteFallback"}, {"type": "Fuse"}, *rest],
    }
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}{{ '[INST] ' + m.content + ' [/INST]' }}"
        "{% else %}{{ ' ' + m.content + eos_token }}{% endif %}{% endfor %}"
    )
    config = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "chat_template": template}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def llama2_style(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sentencepiece_bpe(tmp_path_factory.mktemp("llama2_style"), metaspace=False)


@pytest.fixture(scope="module")
def mistral_style(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sentencepiece_bpe(tmp_path_factory.mktemp("mistral_style"), metaspace=True)


def expected_raw_bytes(fixture: str, text: str) -> bytes:
    """What the token bytes of ``encode(text)`` concatenate to: SentencePiece styles add a leading space."""
    if fixture == "gpt2_style" or not text:
        return text.encode("utf-8")
    if fixture == "mistral_style" and text.startswith(" "):
        return text.encode("utf-8")  # prepend_scheme "first" adds no "▁" before an existing one
    return (" " + text).encode("utf-8")


@pytest.mark.parametrize("fixture", ["gpt2_style", "llama2_style", "mistral_style"])
def test_foreign_tokenizers_round_trip(request: pytest.FixtureRequest, fixture: str) -> None:
    path: Path = request.getfixturevalue(fixture)
    ref = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    tok = load_any_tokenizer(path)
    assert isinstance(tok, HFTokenizer) and isinstance(tok, TokenizerLike)
    assert tok.style == ("byte_level" if fixture == "gpt2_style" else "byte_fallback")
    for text in TRICKY:
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids
        assert b"".join(tok.token_bytes(i) for i in ids) == expected_raw_bytes(fixture, text)
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)
        assert stream(tok, ids) == tok.decode(ids)


def test_byte_fallback_tokens_are_real_bytes(llama2_style: Path) -> None:
    tok = load_hf_tokenizer(llama2_style)
    assert tok.token_bytes(3 + 0xF0) == b"\xf0"
    ids = tok.encode("🦙")  # not in the training text: four byte tokens after "▁"
    assert [tok.token_bytes(i) for i in ids] == [b" "] + [bytes([b]) for b in "🦙".encode()]
    assert tok.bos_id == 1 and tok.eos_id == 2 and tok.add_bos_token
    assert tok.encode("a</s>b").count(2) == 0 and tok.encode("a</s>b", allowed_special="all").count(2) == 1
    # Streaming one id at a time never emits half a character.
    dec = tok.stream_decoder()
    assert [dec.push(i) for i in ids] == ["", "", "", "", "🦙"] and dec.flush() == ""


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_foreign_stream_decoding_matches_hf_decode(
    gpt2_style: Path, llama2_style: Path, mistral_style: Path, data: st.DataObject
) -> None:
    path = data.draw(st.sampled_from([gpt2_style, llama2_style, mistral_style]))
    tok = load_hf_tokenizer(path)
    ref = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    # HF's ByteFallback decoder turns a run of byte tokens that is not valid UTF-8 into one U+FFFD per
    # token, while a byte-level decoder (and ours) replaces maximal invalid subsequences; so random ids
    # skip the <0xNN> tokens of the byte-fallback vocab. Valid runs are checked below via real text.
    skip = set(tok.special_tokens.values()) | (set(range(3, 259)) if tok.style == "byte_fallback" else set())
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1).filter(lambda i: i not in skip), max_size=25))
    assert stream(tok, ids) == tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    text = data.draw(_unicode)
    ids = tok.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False).ids
    assert stream(tok, ids) == tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)


def test_foreign_jinja_chat_template_mask(llama2_style: Path) -> None:
    tok = load_hf_tokenizer(llama2_style)
    msgs = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "The quick fox."}]
    rendered = render_chat(tok, msgs)
    assert rendered.ids[0] == tok.bos_id
    masked = [i for i, m in zip(rendered.ids, rendered.loss_mask) if m]
    assert masked[-1] == tok.eos_id
    assert "The quick fox." in tok.decode(masked) and "Hello" not in tok.decode(masked)


# ------------------------------------------------------------------------------------------ dispatch
def test_load_any_tokenizer_dispatch(native: Tokenizer, exported: Path, tmp_path: Path) -> None:
    native.save(tmp_path / "native")
    assert isinstance(load_any_tokenizer(tmp_path / "native"), Tokenizer)
    assert isinstance(load_any_tokenizer(exported / "tokenizer.json"), HFTokenizer)
    model_dir = tmp_path / "model"
    native.save(model_dir / "tokenizer")
    assert isinstance(load_any_tokenizer(model_dir), Tokenizer)
    (tmp_path / "odd.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="unknown"):
        load_any_tokenizer(tmp_path / "odd.json")
    (tmp_path / "broken.json").write_text('{"model": ')
    with pytest.raises(ValueError, match="corrupted JSON"):
        load_any_tokenizer(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        load_any_tokenizer(tmp_path / "missing")


def test_unsupported_hf_models_are_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported HF model type 'WordPiece'"):
        detect_style({"model": {"type": "WordPiece"}})
    with pytest.raises(ValueError, match="neither ByteLevel nor byte_fallback"):
        detect_style({"model": {"type": "BPE", "byte_fallback": False}, "pre_tokenizer": None})
    with pytest.raises(ValueError, match="out of range"):
        HFTokenizer(
            json.loads(tokenizers.Tokenizer(tokenizers.models.BPE(byte_fallback=True)).to_str())
        ).decode([5])
