"""gmem.retrieval.corpus: DPR 100-word passages, the embedded wiki corpus, and psgs_w100 TSVs
(round trip, and one-line errors naming file and line for every kind of broken line)."""

import pytest

from gmem.errors import GmemError
from gmem.retrieval import Corpus, Passage, read_dpr_tsv, split_passages, tsv_corpus, write_dpr_tsv
from gmem.retrieval.corpus import passages_from_articles, wiki_corpus


def test_split_into_consecutive_100_word_windows():
    words = [f"w{i}" for i in range(250)]
    ps = split_passages("Title", "  ".join(words) + "\n", start_id=7)
    assert [p.id for p in ps] == ["7", "8", "9"]
    assert all(p.title == "Title" for p in ps)
    assert [len(p.text.split()) for p in ps] == [100, 100, 50]
    assert ps[0].text == " ".join(words[:100]) and ps[2].text == " ".join(words[200:])
    assert split_passages("Empty", "   ", 1) == []
    assert [p.text for p in split_passages("T", "a b c d e", 1, words=2)] == ["a b", "c d", "e"]


def test_ids_run_over_articles_and_are_stable():
    arts = [("A", "x " * 150), ("B", ""), ("C", "y z")]
    ps = passages_from_articles(arts)
    assert [(p.id, p.title) for p in ps] == [("1", "A"), ("2", "A"), ("3", "C")]
    assert passages_from_articles(arts) == ps


def test_embedded_wiki_corpus():
    c = wiki_corpus()
    ps = c.materialize()
    assert len(ps) > 10_033  # every summary gives >= 1 passage, long ones more
    assert [p.id for p in ps] == [str(i) for i in range(1, len(ps) + 1)]
    assert max(len(p.text.split()) for p in ps) == 100
    assert all(p.title and p.text for p in ps)
    assert wiki_corpus().fingerprint() == c.fingerprint()
    assert wiki_corpus(words=50).fingerprint() != c.fingerprint()


def test_tsv_round_trip(tmp_path):
    ps = [Passage("1", "Quote \"this\"", 'He said "hi"\tthen left'), Passage("2", "", "plain"),
          Passage("x-3", "Ünïcode", "naïve café")]
    path = write_dpr_tsv(tmp_path / "psgs.tsv", ps)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "id\ttext\ttitle"
    assert list(read_dpr_tsv(path)) == ps
    c = tsv_corpus(path)
    assert c.name == "psgs.tsv" and len(c) == 3 and c.fingerprint() == Corpus("x", ps).fingerprint()


def _tsv(tmp_path, body: bytes):
    p = tmp_path / "bad.tsv"
    p.write_bytes(b"id\ttext\ttitle\n" + body)
    return p


@pytest.mark.parametrize("body, line, what", [
    (b"1\tok\tT\n2\tonly two fields\n", 3, "2 tab-separated fields, expected 3"),
    (b"1\tok\tT\n2\ta\tb\tc\n", 3, "4 tab-separated fields"),
    (b"\ttext\tTitle\n", 2, "bad passage id ''"),
    (b"1\tok\tT\n1 2\ttext\tTitle\n", 3, "bad passage id '1 2'"),
    (b"1\tok\tT\n2\tok\tT\n3\tcaf\xe9\tT\n", 4, "not UTF-8"),
    (b"1\tok\tT\n\n", 3, "empty line"),
    (b"1\t\"unclosed\tT\n", 2, "cannot parse"),
])
def test_broken_tsv_lines_name_file_and_line(tmp_path, body, line, what):
    path = _tsv(tmp_path, body)
    with pytest.raises(GmemError) as e:
        list(read_dpr_tsv(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}, line {line}:") and what in msg and "\n" not in msg


def test_bad_header_and_missing_file(tmp_path):
    p = tmp_path / "h.tsv"
    p.write_text("id\ttitle\ttext\n1\ta\tb\n")
    with pytest.raises(GmemError, match=r"h.tsv, line 1: header"):
        list(read_dpr_tsv(p))
    with pytest.raises(GmemError, match="not found"):
        tsv_corpus(tmp_path / "none.tsv")
