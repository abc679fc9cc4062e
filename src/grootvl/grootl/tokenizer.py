"""A byte-level tokenizer: token id = byte value (0-255), plus end-of-text and padding.

Built on the ``tokenizers`` library (a byte-level BPE without merges), so it is a stock
``PreTrainedTokenizerFast``: ``save_pretrained`` writes ``tokenizer.json`` and
``AutoTokenizer.from_pretrained`` loads it back with no custom class, which is what Trainer,
``generate`` and lm-evaluation-harness need. Nothing is downloaded.
"""
from __future__ import annotations

END_OF_TEXT = "<|endoftext|>"
PADDING = "<|pad|>"
BYTE_VOCAB_SIZE = 258  # 256 bytes + END_OF_TEXT (256) + PADDING (257)


def _byte_symbols() -> list[str]:
    """One printable unicode character per byte, the alphabet of the ``ByteLevel`` pre-tokenizer.

    Bytes that are visible Latin-1 characters stand for themselves; the others (controls,
    space, soft hyphen...) are mapped, in byte order, to code points 256, 257, ...
    """
    visible = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in visible:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def byte_tokenizer(model_max_length: int = 1 << 20):
    """A new byte-level ``PreTrainedTokenizerFast`` with ``BYTE_VOCAB_SIZE`` tokens.

    Ids 0-255 are the UTF-8 bytes of the text; 256 is ``<|endoftext|>`` (bos and eos), 257 is
    ``<|pad|>``. No token is added automatically.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}
    vocab[END_OF_TEXT] = 256
    vocab[PADDING] = 257
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=PADDING,
        model_max_length=model_max_length,
    )
