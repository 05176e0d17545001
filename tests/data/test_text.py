"""Text data: loading, chunking, the deterministic batch stream, and its errors."""

import json

import numpy as np
import pytest

from gmem.data.text import (BatchStream, ByteTokenizer, chunk_tokens, load_texts, split_rows,
                            write_jsonl)
from gmem.errors import GmemError


def test_load_txt_folder_json_and_jsonl(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("bee")
    (tmp_path / "docs" / "a.txt").write_text("ay")
    (tmp_path / "docs" / "skip.md").write_text("no")
    assert load_texts(str(tmp_path / "docs")) == ["ay", "bee"]  # sorted, *.txt only
    assert load_texts(str(tmp_path / "docs"), max_chars=3) == ["ay", "b"]
    write_jsonl(tmp_path / "d.jsonl", [{"body": "one"}, {"body": "two"}])
    assert load_texts(str(tmp_path / "d.jsonl"), text_field="body") == ["one", "two"]
    (tmp_path / "d.json").write_text(json.dumps([{"text": "x"}, {"text": "y"}]))
    assert load_texts(str(tmp_path / "d.json")) == ["x", "y"]
    with pytest.raises(GmemError, match=r"d\.jsonl: no field 'text' \(system\.text_field\); fields are \['body'\]"):
        load_texts(str(tmp_path / "d.jsonl"))
    with pytest.raises(GmemError, match="system.corpus: '/no/such' is not 'shakespeare', a file or a folder"):
        load_texts("/no/such")
    with pytest.raises(GmemError, match=r"no files matching '\*\.txt\.gz'"):
        load_texts(str(tmp_path / "docs"), glob="*.txt.gz")


def test_chunks_and_split():
    tok = ByteTokenizer()
    rows = chunk_tokens(["abcd", "efgh"], tok.encode, seq_len=3, eos_id=tok.eos_token_id)
    # a b c d EOS e f g h EOS -> rows of 4, the remainder dropped
    assert rows.dtype == np.int32 and rows.shape == (2, 4)
    assert rows.tolist() == [[97, 98, 99, 100], [257, 101, 102, 103]]
    train, ev = split_rows(np.arange(20).reshape(10, 2), 0.2)
    assert len(train) == 8 and ev.tolist() == [[16, 17], [18, 19]]
    with pytest.raises(GmemError, match="fewer than one row"):
        chunk_tokens(["ab"], tok.encode, seq_len=8)
    assert tok.decode(tok.encode("héllo", add_special_tokens=True)) == "héllo"


def test_batch_stream_is_a_function_of_the_index():
    rows = np.arange(10 * 3).reshape(10, 3)
    s = BatchStream(rows, batch_size=4, seed=1)
    assert s.per_epoch == 2
    seen = np.concatenate([s.indices(0), s.indices(1)])
    assert len(set(seen.tolist())) == 8  # no repeats inside an epoch
    np.testing.assert_array_equal(s.host_batch(5)["input_ids"], BatchStream(rows, 4, seed=1).host_batch(5)["input_ids"])
    assert not np.array_equal(s.indices(2), s.indices(0)) or not np.array_equal(s.indices(3), s.indices(1))
    # Hosts take disjoint slices of the same global batch.
    full = s.host_batch(3)["input_ids"]
    np.testing.assert_array_equal(np.concatenate([s.host_batch(3, slice(0, 2))["input_ids"],
                                                  s.host_batch(3, slice(2, 4))["input_ids"]]), full)
    it = s.iterate(start=3)
    np.testing.assert_array_equal(next(it)["input_ids"], full)
    with pytest.raises(GmemError, match="data.batch_size=11 is larger than the 10 rows"):
        BatchStream(rows, batch_size=11)


def test_line_rows_one_row_per_line_padded_and_masked():
    from gmem.data.text import line_rows
    tok = ByteTokenizer()
    text = "ab\n\n   \nabcdefgh\nx\n"   # blank lines skipped; "x\n" has 2 tokens, kept
    rows, mask = line_rows([text, "last line"], tok.encode, seq_len=4, pad_id=tok.pad_token_id)
    assert rows.dtype == np.int32 and mask.dtype == np.float32 and rows.shape == (4, 5) == mask.shape
    assert tok.decode(rows[0][mask[0] > 0]) == "ab\n" and mask[0].tolist() == [1, 1, 1, 0, 0]
    assert rows[0, 3:].tolist() == [tok.pad_token_id] * 2
    assert tok.decode(rows[1]) == "abcde"              # cut to seq_len + 1 tokens
    assert tok.decode(rows[2][mask[2] > 0]) == "x\n"
    assert tok.decode(rows[3][mask[3] > 0]) == "last "
    with pytest.raises(GmemError, match="no line of at least 2 tokens"):
        line_rows(["\n\na\n"], lambda t: tok.encode(t.strip()), seq_len=4)
    s = BatchStream(rows, 2, seed=0, mask=mask)
    b = s.host_batch(0)
    np.testing.assert_array_equal(b["mask"], mask[s.indices(0)])
