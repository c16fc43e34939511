"""Tests of the offline CLIP BPE tokenizer (animdreamer_jax.prior.tokenizer)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import tokenizer as tok


@pytest.fixture(scope="module")
def clip():
  return tok.default_tokenizer()


def test_vocabulary_layout(clip):
  assert clip.vocab_size == 49408
  assert clip.start_id == 49406 and clip.end_id == 49407
  # Id 0 is the byte "!" (OpenCLIP's zero padding decodes as "!"); 256 is "!</w>".
  assert clip.id_to_token[0] == "!" and clip.id_to_token[256] == "!</w>"


def test_hand_checked_ids(clip):
  """Ids checked by hand against published CLIP tokenisations."""
  ids = clip("a photo of a cat")[0]
  np.testing.assert_array_equal(ids[:7], [49406, 320, 1125, 539, 320, 2368, 49407])
  assert ids.shape == (77,) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids[7:], 0)  # zero padding, not EOT
  assert clip.encode("dog") == [1929]


def test_truncation_forces_end_token(clip):
  ids = clip("word " * 100)[0]
  word = clip.encode("word")
  assert len(word) == 1
  assert ids[0] == clip.start_id and ids[-1] == clip.end_id
  np.testing.assert_array_equal(ids[1:-1], word[0])
  assert tok.tokenize(["a", "b c"], context_length=5).shape == (2, 5)


def test_cleaning(clip):
  assert tok.clean_text("  A  Photo\n\tOF &amp;amp; x ") == "a photo of & x"
  assert tok.clean_text("\u201cQuoted\u201d \u2018it\u2019s\u2019 \ufb01sh \uff21\uff22") == \
      "\"quoted\" 'it's' fish ab"
  np.testing.assert_array_equal(clip("A PHOTO OF   A CAT"), clip("a photo of a cat"))


def test_split_words():
  assert tok.split_words("dog's hat''s 12ab!! x-ray <end_of_text>") == [
      "dog", "'s", "hat", "''", "s", "1", "2", "ab", "!!", "x", "-", "ray", "<end_of_text>"]
  assert tok.split_words("caf\u00e9 \u6771\u4eac2024") == ["caf\u00e9", "\u6771\u4eac", "2", "0", "2", "4"]


def test_split_words_matches_clip_regex():
  """The scanner equals CLIP's regular expression (needs the `regex` package for \\p{..})."""
  regex = pytest.importorskip("regex")
  pattern = regex.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                          r"[^\s\p{L}\p{N}]+", regex.IGNORECASE)
  texts = ["it's 3.14 o'clock, we'll've ''d", "x-ray c++ e.g. #tag @user (a)[b]{c}",
           "na\u00efve \u00fcber \u6771\u4eac 2024\u5e74 \U0001f98a emoji", "<start_of_text>a<end_of_text>"]
  for text in texts:
    cleaned = tok.clean_text(text)
    assert tok.split_words(cleaned) == pattern.findall(cleaned), text


def _bpe_by_rank_order(word: str, merges: list[tuple[str, str]]) -> list[str]:
  """Slow reference: apply every merge of the list in rank order to the whole word."""
  symbols = list(word[:-1]) + [word[-1] + "</w>"]
  for first, second in merges:
    if first not in symbols:
      continue
    out, i = [], 0
    while i < len(symbols):
      if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
        out.append(first + second)
        i += 2
      else:
        out.append(symbols[i])
        i += 1
    symbols = out
  return symbols


def test_bpe_matches_rank_order_reference(clip):
  with gzip.open(tok.default_bpe_path(), "rb") as f:
    merges = [tuple(line.split()) for line in f.read().decode("utf-8").split("\n")[1:1 + tok.NUM_MERGES]]
  for word in ["photograph", "astronaut", "unbelievably", "xyzzy", "horse", "animatable", "a"]:
    assert clip.bpe(word) == _bpe_by_rank_order(word, merges), word


def test_decode_round_trip(clip):
  text = "an astronaut riding a horse, 3d asset"
  assert clip.decode(clip(text)[0]) == "an astronaut riding a horse , 3 d asset"
  assert clip.decode(clip("caf\u00e9")[0]) == "caf\u00e9"


def test_missing_or_corrupt_vocabulary(tmp_path, monkeypatch):
  bad = tmp_path / tok.BPE_FILENAME
  bad.write_bytes(b"not gzip")
  with pytest.raises(UserError, match=tok.BPE_FILENAME):
    tok.ClipTokenizer(bad)
  short = tmp_path / "short.txt.gz"
  with gzip.open(short, "wb") as f:
    f.write(b"header\na b\n")
  with pytest.raises(UserError, match="short.txt.gz"):
    tok.ClipTokenizer(short)
  monkeypatch.setenv(tok.BPE_ENV_VAR, str(tmp_path / "nowhere"))
  assert tok.bpe_file_candidates()[0] == tmp_path / "nowhere"


def _hf_clip_tokenizer(clip, tmp_path):
  """transformers' CLIPTokenizer over the same vocabulary (vocab.json + merges.txt derived from the .gz)."""
  transformers = pytest.importorskip("transformers")
  with gzip.open(tok.default_bpe_path(), "rb") as f:
    merges = f.read().decode("utf-8").split("\n")[1:1 + tok.NUM_MERGES]
  vocab = {t: i for i, t in enumerate(clip.id_to_token)}
  vocab["<|startoftext|>"] = vocab.pop(tok.START_OF_TEXT)
  vocab["<|endoftext|>"] = vocab.pop(tok.END_OF_TEXT)
  (tmp_path / "vocab.json").write_text(json.dumps(vocab))
  (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
  return transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))


@pytest.mark.parity
def test_matches_transformers_clip_tokenizer(clip, tmp_path):
  """Ids equal transformers' CLIPTokenizer up to <end_of_text>; after it OpenCLIP pads with zeros.

  Known deviations, kept out of the texts: HF without ftfy keeps curly quotes (OpenCLIP straightens
  them), and SD2's HF tokenizer, whose pad token is "!", never merges "!!" (diffusers #4153).
  """
  pytest.importorskip("torch")
  hf = _hf_clip_tokenizer(clip, tmp_path)
  texts = ["a photo of a cat", "An astronaut riding a horse, 3d asset", "dog's  HAT's 12ab!!",
           "caf\u00e9 fish", "", "word " * 100, "it'll we've I'm you're",
           "x-ray C++ e.g. 3.14 #hashtag @user", "na\u00efve \u00fcber \u6771\u4eac 2024\u5e74 \U0001f98a",
           "a DSLR photo of a corgi wearing a beret, ultra-detailed 4k"]
  ref = np.asarray(hf(texts, padding="max_length", max_length=77, truncation=True).input_ids)
  ours = clip(texts)
  for row, text in enumerate(texts):
    end = list(ref[row]).index(clip.end_id) + 1
    np.testing.assert_array_equal(ours[row, :end], ref[row, :end], err_msg=text)
    np.testing.assert_array_equal(ours[row, end:], 0, err_msg=text)


@pytest.mark.parity
def test_cleaning_matches_ftfy():
  ftfy = pytest.importorskip("ftfy")
  for text in ["\u201cquoted\u201d \u2018single\u2019", "\ufb01sh \uff21\uff22\u3000x", "a\x00b\x07c\ufeffd",
               "e\u0301", "I\u2019m here", "tab\there \u6771\u4eac \U0001f98a"]:
    assert tok._ftfy_lite(text) == ftfy.fix_text(text), repr(text)  # pylint: disable=protected-access
