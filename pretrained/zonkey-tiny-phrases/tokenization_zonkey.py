"""Byte-level tokenizer for Zonkey.

Id layout (vocabulary size 257):

* ids ``0..255`` are the UTF-8 byte values themselves (``id == byte``);
* id ``256`` is the padding token ``"<pad>"``.

There is no BOS/EOS/UNK token and nothing is ever added around a sequence: the
model infers segment lengths from its predicted existence, not from an EOS.
Encoding is lossless for any string UTF-8 can encode, i.e. any Unicode text,
including text that contains the literal characters ``"<pad>"`` (those are
encoded as their five bytes, never as the pad id). A ``str`` holding a lone
surrogate code point (U+D800..U+DFFF, e.g. ``"a\\ud800b"`` from broken JSON or
``os.fsdecode``) is not text UTF-8 can encode: it raises a ValueError naming the
position; clean such strings first, e.g. with
``text.encode("utf-8", errors="replace").decode("utf-8")`` (surrogates become
``"?"``). Decoding uses ``errors="replace"`` so invalid or truncated UTF-8 never
raises.

This module only depends on the standard library and top-level ``transformers``
symbols so that it can also be shipped as Hub remote code.
"""

from __future__ import annotations

from typing import Any

from transformers import AddedToken, PreTrainedTokenizer

NUM_BYTES = 256
PAD_TOKEN = "<pad>"
PAD_TOKEN_ID = NUM_BYTES  # the one pad id of the package: configuration, model, generation, data and baseline use it
VOCAB_SIZE = NUM_BYTES + 1
WHITESPACE_BYTES = b" \t\n\r\x0b\x0c"  # the bytes for which bytes.isspace() holds (word and sentence boundaries)


class ZonkeyTokenizer(PreTrainedTokenizer):
    """UTF-8 byte tokenizer: ids 0-255 are bytes, id 256 is ``<pad>``."""

    vocab_files_names: dict[str, str] = {}
    model_input_names: list[str] = ["input_ids", "attention_mask"]

    def __init__(
        self,
        pad_token: str | AddedToken = PAD_TOKEN,
        model_max_length: int = 2048,
        clean_up_tokenization_spaces: bool = False,
        **kwargs: Any,
    ) -> None:
        if isinstance(pad_token, str):
            pad_token = AddedToken(pad_token, lstrip=False, rstrip=False, normalized=False, special=True)
        # The vocabulary must exist before the base class initialises special tokens.
        self._num_bytes = NUM_BYTES
        self._added_tokens_decoder = {PAD_TOKEN_ID: pad_token}
        super().__init__(
            pad_token=pad_token,
            model_max_length=model_max_length,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )

    @property
    def vocab_size(self) -> int:
        return self._num_bytes + 1

    @property
    def padding_side(self) -> str:
        return "right"

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        if side != "right":
            raise ValueError(f"ZonkeyTokenizer pads on the right only (got padding_side={side!r}): ZonkeyModel "
                             "needs its documents to start at position 0.")

    def _add_tokens(self, new_tokens: list[str] | list[AddedToken], special_tokens: bool = False) -> int:
        vocabulary = self.get_vocab()
        new = [str(token) for token in new_tokens if str(token) not in vocabulary]
        if new:
            raise ValueError(f"ZonkeyTokenizer has a fixed vocabulary of 256 bytes and <pad>; it cannot add tokens "
                             f"{new[:5]} (any text is already encoded as its UTF-8 bytes).")
        return super()._add_tokens(new_tokens, special_tokens)

    def _encode_plus(self, *args: Any, **kwargs: Any):
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("ZonkeyTokenizer does not return offsets: id i of a text is its i-th UTF-8 byte, "
                                      "so text.encode('utf-8')[i] is the token and byte offsets are the positions.")
        if kwargs.get("padding_side") not in (None, "right"):
            raise ValueError(f"ZonkeyTokenizer pads on the right only (got padding_side={kwargs['padding_side']!r}).")
        return super()._encode_plus(*args, **kwargs)

    def get_vocab(self) -> dict[str, int]:
        vocab = {chr(i): i for i in range(self._num_bytes)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def tokenize(self, text: str, **kwargs: Any) -> list[str]:
        """Split ``text`` into one token per UTF-8 byte.

        Unlike the base class, added/special tokens are never matched inside raw
        text, so a literal ``"<pad>"`` is encoded byte by byte. A lone surrogate
        raises a ValueError with its position (see the module docstring).
        """
        kwargs.pop("split_special_tokens", None)
        text, _ = self.prepare_for_tokenization(text, **kwargs)
        return self._tokenize(text)

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as error:  # only lone surrogates fail: they are not characters
            raise ValueError(f"ZonkeyTokenizer: the text holds a lone surrogate U+{ord(text[error.start]):04X} at "
                             f"position {error.start}, which has no UTF-8 bytes: clean it first, e.g. "
                             "text.encode('utf-8', errors='replace').decode('utf-8').") from None
        return [chr(b) for b in data]

    def _convert_token_to_id(self, token: str) -> int | None:
        if len(token) == 1 and ord(token) < self._num_bytes:
            return ord(token)
        return None

    def _convert_id_to_token(self, index: int) -> str:
        if 0 <= index < self._num_bytes:
            return chr(index)
        raise ValueError(f"Token id {index} is outside the vocabulary of {len(self)} ids.")

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        ids = [self._added_tokens_encoder.get(t, ord(t) if len(t) == 1 else -1) for t in tokens]
        return self._ids_to_text(ids, skip_special_tokens=False)

    def _ids_to_text(self, ids: list[int], skip_special_tokens: bool) -> str:
        special_ids = set(self.all_special_ids) if skip_special_tokens else set()
        buffer = bytearray()
        for index in ids:
            index = int(index)
            if index in special_ids:
                continue
            if index in self._added_tokens_decoder:
                buffer.extend(self._added_tokens_decoder[index].content.encode("utf-8"))
            elif 0 <= index < self._num_bytes:
                buffer.append(index)
            else:
                raise ValueError(f"Token id {index} is outside the vocabulary of {len(self)} ids.")
        return buffer.decode("utf-8", errors="replace")

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> str:
        # Bytes are joined before UTF-8 decoding so multi-byte characters survive;
        # whitespace clean-up is never applied because decoding must be lossless.
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return self._ids_to_text(list(token_ids), skip_special_tokens=skip_special_tokens)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """No special tokens are added: returns the (concatenated) ids unchanged."""
        return list(token_ids_0) if token_ids_1 is None else list(token_ids_0) + list(token_ids_1)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """The vocabulary is fixed, so there is no vocabulary file to write."""
        return ()


__all__ = ["ZonkeyTokenizer"]
