"""The R2D2 tokenizer: BERT WordPiece over Chinese RoBERTa-wwm-ext's vocabulary, at most 64 tokens.

Use :func:`load_tokenizer` with a local ``vocab.txt`` or a Hugging Face directory (e.g. a download of
hfl/chinese-roberta-wwm-ext). It always builds a ``BertTokenizerFast`` and checks the vocabulary size against
the file: transformers 5's ``BertTokenizer(vocab_file=...)`` can silently produce a 5-token vocabulary.
:func:`write_test_vocab` writes a small character-level Chinese vocabulary for tests.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Union

import torch

logger = logging.getLogger(__name__)

MAX_TEXT_LEN = 64
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# A few hundred frequent Chinese characters (enough for tests and examples).
COMMON_CHINESE = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定"
    "行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些"
    "然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公"
    "无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将"
    "组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金"
    "增争济阶油思术极交受联什认六共权收证改清美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八"
    "离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验"
    "连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯"
    "猫狗鸟鱼草树花朵红黄蓝绿黑白灰衣服帽子鞋桌椅床房车船飞机城市街道河湖海天空云雨雪阳光月星男女孩童笑跑跳坐站吃喝看"
)


def load_tokenizer(path: Union[str, "os.PathLike[str]"], max_length: int = MAX_TEXT_LEN):
    """A ``BertTokenizerFast`` from a ``vocab.txt`` file or a directory (``vocab.txt`` or ``tokenizer.json``),
    lower-casing and splitting Chinese characters as Chinese RoBERTa-wwm-ext does; ``model_max_length`` is
    ``max_length``. Raises ValueError naming the file if the vocabulary size does not match the file."""
    from transformers import BertTokenizerFast

    path = Path(path)
    vocab = path if path.is_file() else path / "vocab.txt"
    if path.is_dir() and not vocab.is_file():
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path}: neither vocab.txt nor tokenizer.json found")
        tok = BertTokenizerFast.from_pretrained(str(path), model_max_length=max_length)
        expected, tokens = None, []
    elif vocab.is_file():
        tokens = vocab.read_text(encoding="utf-8").splitlines()
        # pass the vocabulary as a dict: in transformers 5 ``vocab_file=`` is silently ignored (5-token vocab)
        tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True,
                                tokenize_chinese_chars=True, model_max_length=max_length)
        expected = len(tokens)
    else:
        raise FileNotFoundError(f"{path}: tokenizer vocabulary not found")
    if expected is not None and tok.vocab_size != expected:
        raise ValueError(f"{vocab}: tokenizer has {tok.vocab_size} tokens but the file has {expected} lines "
                         "(duplicate or malformed entries?)")
    known = set(tokens) if expected is not None else set(tok.get_vocab())
    missing = [t for t in SPECIAL_TOKENS if t not in known]
    if missing:
        raise ValueError(f"{vocab if expected is not None else path}: special tokens {missing} are not in the "
                         "vocabulary")
    logger.debug("tokenizer from %s: %d tokens, max_length %d", path, tok.vocab_size, max_length)
    return tok


def tokenize(tokenizer, texts: Iterable[str], max_length: int = MAX_TEXT_LEN) -> Dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}`` [N, L]: truncated to ``max_length``, padded to the longest text
    (padding is masked, so results equal the official padding to 64)."""
    texts = list(texts)
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt",
                    return_token_type_ids=False)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def write_test_vocab(directory: Union[str, "os.PathLike[str]"], extra_chars: str = "") -> Path:
    """Write a small character-level Chinese ``vocab.txt`` (special tokens, digits, a-z, punctuation, a few
    hundred common characters, ``extra_chars``, ``##`` continuations of digits and a-z) into ``directory``;
    returns its path. Fits ``r2d2-tiny``
    (vocab_size 1024)."""
    tokens: List[str] = list(SPECIAL_TOKENS)
    seen = set(tokens)
    pool = list("0123456789abcdefghijklmnopqrstuvwxyz，。！？、：；“”（）,.!?:;'\"()-") + list(COMMON_CHINESE) \
        + list(extra_chars) + [f"##{c}" for c in "0123456789abcdefghijklmnopqrstuvwxyz"]
    for ch in pool:
        if ch not in seen and not ch.isspace():
            seen.add(ch)
            tokens.append(ch)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    from ccmb.atomic import write_text

    write_text(path, "\n".join(tokens) + "\n")
    return path
