"""Knowledge graphs: OpenKE folders and label-TSV triples, and the neighbourhood index (each
entity's incident edges, padded per entity, and relation histograms). GMT's query
neighbourhoods (the edges around h and t of a query triple) are built on the index in
gmem.systems.gmt.graph.

Ids: entities 0..N-1, base relations 0..R-1. With `add_inverse`, the edge from t back to h of
triple (h, r, t) carries relation r + R (GMT's `--add_inverse`); without it, it carries r
(the same id in both directions, as in the reference). Triples are kept as int32 [n, 3] in
(h, r, t) order whatever the file order.

Bad files raise GmemError naming the file and line; every problem in a file is listed at once.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

from gmem.errors import GmemError, collect_errors, read_utf8

_FORMATS = ("htr", "hrt", "thr", "trh", "rht", "rth")


# ---------------------------------------------------------------------------------------------
# The graph


@dataclasses.dataclass(frozen=True, eq=False)
class KG:
    """A knowledge graph: names, the triples that build the adjacency, and the inverse flag.

    entities[i] / relations[j] are the names of entity i / base relation j; triples int32
    [n, 3] (h, r, t) are the graph's facts (the training split: valid and test triples are
    not in the graph, as in GMT).
    """

    entities: tuple
    relations: tuple
    triples: np.ndarray
    add_inverse: bool = False
    source: str = ""

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        """Base relations R (without inverses)."""
        return len(self.relations)

    @property
    def num_edge_relations(self) -> int:
        """Relation ids an edge can carry: 2R with add_inverse, else R."""
        return 2 * len(self.relations) if self.add_inverse else len(self.relations)

    def edge_relation_names(self) -> list[str]:
        """Names of every edge relation id; inverse ids get 'inverse of <name>'."""
        names = list(self.relations)
        if self.add_inverse:
            names += [f"inverse of {n}" for n in self.relations]
        return names


def _read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise GmemError(f"{path}: file not found")
    return read_utf8(path, "a knowledge-graph file").splitlines()


def _require_triples(triples: np.ndarray, path: str, what: str) -> np.ndarray:
    """The graph is built from these triples: none at all is a mistake in the file, not a graph."""
    if len(triples) == 0:
        raise GmemError(f"{path}: no triples ({what}); the graph needs at least one")
    return triples


def _int(tok: str):
    try:
        return int(tok)
    except ValueError:
        return None


def _check_format(triple_format: str) -> str:
    if triple_format not in _FORMATS:
        raise GmemError(f"triple_format: {triple_format!r} is not one of {', '.join(_FORMATS)}")
    return triple_format


def read_openke_names(path: str) -> tuple:
    """entity2id.txt / relation2id.txt: a count line, then `name<TAB>id` lines -> names by id."""
    lines = _read_lines(path)
    errors: list[str] = []
    if not lines or _int(lines[0].strip()) is None:
        raise GmemError(f"{path}:1: expected the number of entries on the first line")
    count = _int(lines[0].strip())
    names: dict[int, str] = {}
    body = [(i, ln) for i, ln in enumerate(lines[1:], start=2) if ln.strip()]
    for lineno, ln in body:
        parts = ln.split("\t") if "\t" in ln else ln.split()
        if len(parts) != 2:
            errors.append(f"line {lineno}: expected 2 columns (name, id), got {len(parts)}")
            continue
        i = _int(parts[1].strip())
        if i is None:
            errors.append(f"line {lineno}: id {parts[1].strip()!r} is not an integer")
        elif not 0 <= i < count:
            errors.append(f"line {lineno}: id {i} out of range [0, {count})")
        elif i in names:
            errors.append(f"line {lineno}: id {i} given twice")
        else:
            names[i] = parts[0].strip()
    if len(body) != count and not errors:
        errors.append(f"line 1: count says {count} entries but the file has {len(body)}")
    collect_errors(errors, path)
    return tuple(names[i] for i in range(count))


def read_openke_triples(path: str, num_entities: int, num_relations: int,
                        triple_format: str = "htr") -> np.ndarray:
    """train2id.txt-style file: a count line, then 3 integer ids per line in `triple_format`
    order. Returns int32 [n, 3] in (h, r, t) order."""
    fmt = _check_format(triple_format)
    lines = _read_lines(path)
    if not lines or _int(lines[0].strip()) is None:
        raise GmemError(f"{path}:1: expected the number of triples on the first line")
    count = _int(lines[0].strip())
    col = {c: fmt.index(c) for c in "hrt"}
    out, errors = [], []
    body = [(i, ln) for i, ln in enumerate(lines[1:], start=2) if ln.strip()]
    for lineno, ln in body:
        parts = ln.split()
        if len(parts) != 3:
            errors.append(f"line {lineno}: expected 3 columns ({fmt}), got {len(parts)}")
            continue
        ids = [_int(p) for p in parts]
        if any(i is None for i in ids):
            errors.append(f"line {lineno}: non-integer id in {ln.strip()!r}")
            continue
        h, r, t = ids[col["h"]], ids[col["r"]], ids[col["t"]]
        for what, i, n in (("head", h, num_entities), ("relation", r, num_relations),
                           ("tail", t, num_entities)):
            if not 0 <= i < n:
                errors.append(f"line {lineno}: {what} id {i} out of range [0, {n})")
        out.append((h, r, t))
    if len(body) != count and not errors:
        errors.append(f"line 1: count says {count} triples but the file has {len(body)}")
    collect_errors(errors, path)
    return np.asarray(out, np.int32).reshape(-1, 3)


def load_openke(folder: str, triple_file: str = "train2id.txt", triple_format: str = "htr",
                add_inverse: bool = False) -> KG:
    """An OpenKE folder (entity2id.txt, relation2id.txt, `triple_file`) -> KG.

    triple_format: column order of the triple file ('htr' is OpenKE's and GMT's default).
    """
    ents = read_openke_names(os.path.join(folder, "entity2id.txt"))
    rels = read_openke_names(os.path.join(folder, "relation2id.txt"))
    path = os.path.join(folder, triple_file)
    triples = _require_triples(read_openke_triples(path, len(ents), len(rels), triple_format), path,
                               "the file holds only its count line")
    return KG(ents, rels, triples, add_inverse, source=folder)


def _label_rows(path: str, errors: list[str]):
    """(line number, (head, relation, tail) names) for each non-blank line of a label TSV;
    lines without exactly 3 tab-separated columns go to `errors` instead."""
    for lineno, ln in enumerate(_read_lines(path), start=1):
        if not ln.strip():
            continue
        parts = ln.split("\t")
        if len(parts) != 3:
            errors.append(f"line {lineno}: expected 3 tab-separated columns "
                          f"(head, relation, tail), got {len(parts)}")
            continue
        yield lineno, tuple(p.strip() for p in parts)


def read_label_triples(path: str, entity_ids: Mapping[str, int],
                       relation_ids: Mapping[str, int]) -> np.ndarray:
    """A `head<TAB>relation<TAB>tail` file of names -> int32 [n, 3] (h, r, t) ids.

    Names missing from the vocabularies are errors (with their line)."""
    errors, out = [], []
    for lineno, (h, r, t) in _label_rows(path, errors):
        bad = [f"unknown {w} {n!r}" for w, n, voc in (("entity", h, entity_ids),
                                                       ("relation", r, relation_ids),
                                                       ("entity", t, entity_ids)) if n not in voc]
        if bad:
            errors.append(f"line {lineno}: " + ", ".join(bad))
            continue
        out.append((entity_ids[h], relation_ids[r], entity_ids[t]))
    collect_errors(errors, path)
    return np.asarray(out, np.int32).reshape(-1, 3)


def _label_vocab(paths: Sequence[str]) -> tuple[tuple, tuple]:
    ents, rels = set(), set()
    for path in paths:
        errors = []
        for _, (h, r, t) in _label_rows(path, errors):
            ents.update((h, t))
            rels.add(r)
        collect_errors(errors, path)
    # Sorted names, as PyKEEN's TriplesFactory numbers them, so ids are reproducible.
    return tuple(sorted(ents)), tuple(sorted(rels))


def load_label_tsv(splits: Mapping[str, str] | str, graph_split: str = "train",
                   add_inverse: bool = False) -> tuple[KG, dict[str, np.ndarray]]:
    """Label-TSV triples (UMLS, Nations, Kinships as shipped in pykeen) -> (KG, {split: ids}).

    splits: {split name: path}, or a folder holding train.txt / valid.txt / test.txt. Entity
    and relation ids number the sorted names over every split; the graph is `graph_split`.
    A split file without any triple is an error naming it (leave the file out instead).
    """
    if isinstance(splits, str):
        folder = splits
        if not os.path.isdir(folder):
            raise GmemError(f"{folder}: folder not found")
        splits = {s: os.path.join(folder, f"{s}.txt") for s in ("train", "valid", "test")
                  if os.path.isfile(os.path.join(folder, f"{s}.txt"))}
        if graph_split not in splits:
            raise GmemError(f"{folder}: no {graph_split}.txt")
    if graph_split not in splits:
        raise GmemError(f"graph_split: {graph_split!r} is not one of {sorted(splits)}")
    ents, rels = _label_vocab(list(splits.values()))
    e_ids = {n: i for i, n in enumerate(ents)}
    r_ids = {n: i for i, n in enumerate(rels)}
    ids = {s: read_label_triples(p, e_ids, r_ids) for s, p in splits.items()}
    for s, p in splits.items():  # an empty split file is a mistake (leave the file out instead)
        _require_triples(ids[s], p, "the file has no head<TAB>relation<TAB>tail line")
    kg = KG(ents, rels, ids[graph_split], add_inverse, source=str(splits[graph_split]))
    return kg, ids


# ---------------------------------------------------------------------------------------------
# Neighbourhood index


@dataclasses.dataclass(frozen=True, eq=False)
class NeighbourIndex:
    """Per entity, its incident edges as CSR arrays (GMT's `KGIndex.adj`).

    Entity e's edges are rel[offsets[e]:offsets[e+1]] and nbr[...] (relation id, neighbour),
    in the reference's append order: for each triple (h, r, t) in file order, h gets (r, t)
    and t gets (r + R if add_inverse else r, h). Duplicates are kept; degree is unbounded.
    """

    offsets: np.ndarray   # int64 [N + 1]
    rel: np.ndarray       # int32 [2n]
    nbr: np.ndarray       # int32 [2n]
    num_entities: int
    num_relations: int    # base R
    add_inverse: bool

    @property
    def num_edge_relations(self) -> int:
        return 2 * self.num_relations if self.add_inverse else self.num_relations

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def build(cls, kg: KG) -> "NeighbourIndex":
        h, r, t = kg.triples[:, 0], kg.triples[:, 1], kg.triples[:, 2]
        inv = r + kg.num_relations if kg.add_inverse else r
        # Interleave (h-entry, t-entry) per triple, then a stable sort by owner keeps the
        # reference's per-entity append order.
        owner = np.stack([h, t], 1).reshape(-1)
        rel = np.stack([r, inv], 1).reshape(-1)
        nbr = np.stack([t, h], 1).reshape(-1)
        order = np.argsort(owner, kind="stable")
        counts = np.bincount(owner, minlength=kg.num_entities)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(offsets, rel[order].astype(np.int32), nbr[order].astype(np.int32),
                   kg.num_entities, kg.num_relations, kg.add_inverse)

    def neighbours(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(relation ids, neighbour ids) of entity e's edges."""
        s, f = self.offsets[e], self.offsets[e + 1]
        return self.rel[s:f], self.nbr[s:f]

    def padded(self, max_degree: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense per-entity arrays (rel [N, D], nbr [N, D], mask [N, D]), D = max degree
        (or `max_degree`, keeping each entity's first D edges)."""
        deg = self.degree
        d = int(deg.max(initial=0)) if max_degree is None else int(max_degree)
        slot = np.arange(len(self.rel)) - np.repeat(self.offsets[:-1], deg)
        owner = np.repeat(np.arange(self.num_entities), deg)
        keep = slot < d
        rel = np.zeros((self.num_entities, d), np.int32)
        nbr = np.zeros((self.num_entities, d), np.int32)
        mask = np.zeros((self.num_entities, d), bool)
        rel[owner[keep], slot[keep]] = self.rel[keep]
        nbr[owner[keep], slot[keep]] = self.nbr[keep]
        mask[owner[keep], slot[keep]] = True
        return rel, nbr, mask

    def relation_histogram(self, entities: np.ndarray) -> np.ndarray:
        """float32 [len(entities), R_edge]: how many edges of each relation each entity has.

        This is what the SGM's top-k context needs from a neighbour: its incident relations as
        a multiset (top-k of a multiset by similarity = walk relations by similarity, taking
        copies until k are taken), so the context is exact without padding to the max degree.
        """
        entities = np.asarray(entities, np.int64)
        deg = self.degree[entities]
        rows = np.repeat(np.arange(len(entities)), deg)
        starts = np.repeat(self.offsets[entities], deg)
        pos = starts + np.arange(int(deg.sum())) - np.repeat(np.cumsum(deg) - deg, deg)
        hist = np.zeros((len(entities), self.num_edge_relations), np.float32)
        np.add.at(hist, (rows, self.rel[pos]), 1.0)
        return hist
