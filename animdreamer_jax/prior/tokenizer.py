"""CLIP byte-pair-encoding tokenizer that works offline (OpenCLIP semantics).

A small reader of the CLIP BPE merge list `bpe_simple_vocab_16e6.txt.gz` (MIT; shipped in
`third_party/clip_bpe/`). It reproduces `open_clip.tokenize` as MVDream uses it:

- text cleaning: a light stand-in for ftfy (NFC, straight quotes, Latin ligatures, full-width ASCII,
  control characters), HTML un-escaping (twice), whitespace collapsed, lower-cased;
- pre-tokenisation: special tokens, English contractions ('s 't 're 've 'm 'll 'd), runs of letters,
  single digits, runs of other non-space characters (CLIP's regex, written as a scanner over Unicode
  categories so that the `regex` package is not needed);
- byte-level BPE with `</w>` end-of-word markers;
- `[<start_of_text>] + tokens + [<end_of_text>]`, truncated to the context length with the last token
  forced to `<end_of_text>`, then **zero-padded** (id 0 is "!"; OpenCLIP pads with 0, not with EOT).

Vocabulary layout (49,408 ids): 256 byte symbols, the same 256 with `</w>`, 48,894 merges, then
`<start_of_text>` = 49406 and `<end_of_text>` = 49407.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import pathlib
import site
import sys
import unicodedata
from collections.abc import Sequence

import numpy as np

from animdreamer_jax.errors import UserError

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# Environment variable that overrides where the vocabulary file is looked for.
BPE_ENV_VAR = "ANIMDREAMER_CLIP_BPE"
NUM_MERGES = 49152 - 256 - 2
START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
CONTEXT_LENGTH = 77
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


def bpe_file_candidates() -> list[pathlib.Path]:
  """Places searched, in order, for the BPE vocabulary file.

  1. `$ANIMDREAMER_CLIP_BPE` (a file, or a folder holding it);
  2. `third_party/clip_bpe/` of the source tree this package lives in (checkout, editable install);
  3. `<sys.prefix or the user base>/share/animdreamer_jax/clip_bpe/` (a wheel install that ships it as
     setuptools data-files).
  """
  candidates = []
  env = os.environ.get(BPE_ENV_VAR)
  if env:
    p = pathlib.Path(env)
    candidates.append(p / BPE_FILENAME if p.is_dir() else p)
  repo_root = pathlib.Path(__file__).resolve().parents[2]
  candidates.append(repo_root / "third_party" / "clip_bpe" / BPE_FILENAME)
  for base in (sys.prefix, site.getuserbase()):
    candidates.append(pathlib.Path(base) / "share" / "animdreamer_jax" / "clip_bpe" / BPE_FILENAME)
  return candidates


def default_bpe_path() -> pathlib.Path:
  """The first existing candidate of `bpe_file_candidates()`; UserError if none exists."""
  candidates = bpe_file_candidates()
  for p in candidates:
    if p.is_file():
      return p
  raise UserError(f"{BPE_FILENAME}: CLIP BPE vocabulary not found (looked in "
                  f"{', '.join(str(p) for p in candidates)}); set ${BPE_ENV_VAR} to its path")


def _bytes_to_symbols() -> dict[int, str]:
  """Reversible byte -> printable character table of byte-level BPE (GPT-2 / CLIP).

  Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, soft hyphen...)
  map, in byte order, to code points 256, 257, ... so that no symbol is whitespace or a control.
  The table's insertion order (printable bytes first) defines ids 0..255 of the vocabulary.
  """
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) +
               list(range(ord("\xae"), ord("\xff") + 1)))
  table = {b: chr(b) for b in printable}
  extra = 0
  for b in range(256):
    if b not in table:
      table[b] = chr(256 + extra)
      extra += 1
  return table


# --- text cleaning -----------------------------------------------------------------------------

_QUOTE_TABLE = {c: "'" for c in range(0x2018, 0x201C)}
_QUOTE_TABLE.update({c: '"' for c in range(0x201C, 0x2020)})
_LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
              "\ufb05": "st", "\ufb06": "st"}
_LIGATURE_TABLE = {ord(k): v for k, v in _LIGATURES.items()}


def _ftfy_lite(text: str) -> str:
  """The parts of `ftfy.fix_text`'s defaults that matter for prompts (no mojibake repair)."""
  text = unicodedata.normalize("NFC", text)
  text = text.translate(_QUOTE_TABLE).translate(_LIGATURE_TABLE)
  # Full-width ASCII and the ideographic space -> their narrow forms.
  text = "".join(unicodedata.normalize("NFKC", c) if ("\uff01" <= c <= "\uff5e" or c == "\u3000")
                 else c for c in text)
  # Control characters other than whitespace, and the byte-order mark, are dropped.
  return "".join(c for c in text
                 if not ((unicodedata.category(c) == "Cc" and not c.isspace()) or c == "\ufeff"))


def clean_text(text: str) -> str:
  """OpenCLIP's cleaning: ftfy (lite), HTML un-escape twice, whitespace collapsed, lower-case."""
  text = html.unescape(html.unescape(_ftfy_lite(text))).strip()
  return " ".join(text.split()).lower()


# --- pre-tokenisation --------------------------------------------------------------------------


def _is_letter(c: str) -> bool:
  return unicodedata.category(c).startswith("L")


def _is_number(c: str) -> bool:
  return unicodedata.category(c).startswith("N")


def split_words(text: str, special_tokens: Sequence[str] = (START_OF_TEXT, END_OF_TEXT)
               ) -> list[str]:
  """CLIP's pre-tokenisation of cleaned text, as an explicit scanner.

  Equivalent to `findall` with the alternation (tried in this order at each position)
  `specials | 's|'t|'re|'ve|'m|'ll|'d | \\p{L}+ | \\p{N} | [^\\s\\p{L}\\p{N}]+`; whitespace between
  matches is skipped.
  """
  words = []
  i, n = 0, len(text)
  while i < n:
    c = text[i]
    special = next((s for s in special_tokens if text.startswith(s, i)), None)
    if special is not None:
      words.append(special)
      i += len(special)
      continue
    if c == "'":
      suffix = next((s for s in _CONTRACTIONS if text.startswith(s, i + 1)), None)
      if suffix is not None:
        words.append("'" + suffix)
        i += 1 + len(suffix)
        continue
    if _is_letter(c):
      j = i + 1
      while j < n and _is_letter(text[j]):
        j += 1
    elif _is_number(c):
      j = i + 1
    elif c.isspace():
      i += 1
      continue
    else:
      j = i + 1
      while j < n and not (text[j].isspace() or _is_letter(text[j]) or _is_number(text[j])):
        j += 1
    words.append(text[i:j])
    i = j
  return words


# --- BPE ---------------------------------------------------------------------------------------


class ClipTokenizer:
  """Text -> CLIP token ids (OpenCLIP `SimpleTokenizer` + `tokenize` semantics)."""

  def __init__(self, bpe_path: str | os.PathLike | None = None):
    path = pathlib.Path(bpe_path) if bpe_path is not None else default_bpe_path()
    try:
      with gzip.open(path, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
      raise UserError(f"{path}: cannot read the CLIP BPE vocabulary ({e})") from e
    merges = [tuple(line.split()) for line in lines[1:1 + NUM_MERGES]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
      raise UserError(f"{path}: not a CLIP BPE merge list (expected {NUM_MERGES} pairs after the "
                      "header line)")
    self.byte_to_symbol = _bytes_to_symbols()
    self.symbol_to_byte = {s: b for b, s in self.byte_to_symbol.items()}
    base = list(self.byte_to_symbol.values())
    vocab = base + [s + "</w>" for s in base] + ["".join(m) for m in merges]
    vocab += [START_OF_TEXT, END_OF_TEXT]
    self.token_to_id = {t: i for i, t in enumerate(vocab)}
    self.id_to_token = vocab
    self.merge_rank = {m: r for r, m in enumerate(merges)}
    self.start_id = self.token_to_id[START_OF_TEXT]
    self.end_id = self.token_to_id[END_OF_TEXT]
    self.vocab_size = len(vocab)
    self._cache: dict[str, list[str]] = {START_OF_TEXT: [START_OF_TEXT], END_OF_TEXT: [END_OF_TEXT]}

  def bpe(self, word: str) -> list[str]:
    """Symbols of one pre-token (already mapped to byte symbols) after all applicable merges.

    Repeatedly merges every occurrence (left to right, non-overlapping) of the adjacent pair with
    the lowest merge rank, until no adjacent pair is in the merge list.
    """
    if word in self._cache:
      return self._cache[word]
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
      ranks = [self.merge_rank.get(pair, None) for pair in zip(symbols[:-1], symbols[1:])]
      known = [r for r in ranks if r is not None]
      if not known:
        break
      at = ranks.index(min(known))
      first, second = symbols[at], symbols[at + 1]
      merged, i = [], 0
      while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    self._cache[word] = symbols
    return symbols

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` without start/end tokens."""
    ids = []
    for word in split_words(clean_text(text)):
      if word in (START_OF_TEXT, END_OF_TEXT):
        ids.append(self.token_to_id[word])
        continue
      symbols = "".join(self.byte_to_symbol[b] for b in word.encode("utf-8"))
      ids.extend(self.token_to_id[s] for s in self.bpe(symbols))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Inverse of `encode` up to cleaning: `</w>` becomes a space; stops at `<end_of_text>`."""
    data = bytearray()
    for i in ids:
      i = int(i)
      if i == self.end_id:
        break
      if i == self.start_id:
        continue
      token = self.id_to_token[i]
      word_end = token.endswith("</w>")
      data.extend(self.symbol_to_byte[c] for c in (token[:-4] if word_end else token))
      if word_end:
        data.extend(b" ")
    return data.decode("utf-8", errors="replace").strip()

  def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH
              ) -> np.ndarray:
    """Token ids, int32 (B, context_length): start + text + end, truncated, zero-padded."""
    if isinstance(texts, str):
      texts = [texts]
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
      ids = [self.start_id] + self.encode(text) + [self.end_id]
      if len(ids) > context_length:
        ids = ids[:context_length]
        ids[-1] = self.end_id
      out[row, :len(ids)] = ids
    return out


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> ClipTokenizer:
  """The tokenizer over the bundled vocabulary (loaded once; ~1 s)."""
  return ClipTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """`open_clip.tokenize` equivalent: int32 (B, context_length) token ids, zero-padded."""
  return default_tokenizer()(texts, context_length)
