"""Ingestion: raw labelled functions -> ``RawSplit`` (texts, labels, stable ids) + ``IngestReport``.

Sources (see formats.py): Draper VDISC HDF5 (``functionSource`` plus five boolean datasets
``CWE-119 .. CWE-other``), CSV, JSONL, Parquet and, only when trusted, pandas pickles.

Labels come from several 0/1 flag columns (VDISC's, in priority order) under a policy:
  ``enstack5``    the EnStack paper's task: vulnerable functions only (at least one flag), one
                  class each by column priority (119 > 120 > 469 > 476 > other); int64 [N].
  ``binary``      ``not-vulnerable`` / ``vulnerable`` (any flag); int64 [N].
  ``multilabel``  the flags themselves, uint8 [N, K].
or from one column of class names or integers (policy ``class``, which is also what the default
``enstack5`` means for a single column); one 0/1 column with ``binary``/``multilabel`` is a flag.

Rows that cannot be used (missing or empty text, a label that is missing, not 0/1 or not among
``label_names``, values of the wrong type, unparseable lines) are dropped and counted by reason;
more than ``max_bad_share`` of them refuses the file, as that usually means a wrong column.
Text that is not valid UTF-8 (or a lone surrogate escape in JSON) does not make a row bad: each
such byte or escape becomes U+FFFD, and the report counts those rows and names the first ones.

Downsampling and splitting rank rows by a seeded SplitMix64 hash of their position (implemented
here), so results depend on the seed and the data only: not on chunk sizes, numpy versions or
platforms.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from enstack._C import ConfigError, DataError
from enstack.config.schema import ENSTACK5_LABELS, LABEL_POLICIES
from enstack.data import formats
from enstack.data.formats import Scan, clean_text

__all__ = ["IngestReport", "RawSplit", "load_split", "split_stratified", "VDISC_LABELS",
           "BINARY_LABELS", "PAPER_COUNTS"]

VDISC_LABELS = list(ENSTACK5_LABELS)
BINARY_LABELS = ["not-vulnerable", "vulnerable"]
POLICIES = LABEL_POLICIES
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation",
                  "val": "validation", "dev": "validation", "test": "test"}
# Per-class counts of the EnStack paper's downsampled VDISC, in VDISC_LABELS order.
PAPER_COUNTS = {"train": [5942, 5777, 249, 2755, 5582],
                "validation": [1142, 1099, 53, 535, 1071],
                "test": [1142, 1099, 53, 535, 1071]}
DEFAULT_CHUNK_ROWS = 65536
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class IngestReport:
    """What happened to the rows of one source."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    bad: Dict[str, int] = field(default_factory=dict)
    bad_examples: Dict[str, List[int]] = field(default_factory=dict)  # first source rows per reason
    filtered: int = 0  # usable rows the label policy leaves out (enstack5: not vulnerable)
    downsampled_away: int = 0
    class_counts: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    # Usable rows whose text was not valid UTF-8 (or held a lone surrogate escape): kept, with
    # each bad character replaced by U+FFFD; not bad rows, as the function is still there.
    replaced_rows: int = 0
    replaced_examples: List[int] = field(default_factory=list)  # first source rows

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())

    @property
    def bad_share(self) -> float:
        return self.bad_rows / self.rows_read if self.rows_read else 0.0

    def add_bad(self, reason: str, row: int) -> None:
        self.bad[reason] = self.bad.get(reason, 0) + 1
        examples = self.bad_examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(row)

    def add_replaced(self, row: int) -> None:
        self.replaced_rows += 1
        if len(self.replaced_examples) < 5:
            self.replaced_examples.append(row)

    def bad_detail(self) -> str:
        def rows(r: str) -> str:
            first = self.bad_examples[r]
            return f"row {first[0]}" if len(first) == 1 else f"rows {', '.join(map(str, first))}"
        return ", ".join(f"{r} {count:,} (e.g. {rows(r)})"
                         for r, count in sorted(self.bad.items(), key=lambda kv: -kv[1]))

    def summary(self) -> str:
        lines = [f"{self.source}: read {self.rows_read:,} rows, kept {self.rows_kept:,}"]
        if self.bad:
            lines.append(f"  bad {self.bad_rows:,} ({self.bad_share:.2%}): {self.bad_detail()}")
        if self.replaced_rows:
            lines.append(f"  invalid UTF-8 replaced by U+FFFD in {self.replaced_rows:,} rows (e.g. rows "
                         f"{', '.join(map(str, self.replaced_examples))})")
        if self.filtered:
            lines.append(f"  left out by the label policy: {self.filtered:,}")
        if self.downsampled_away:
            lines.append(f"  left out by downsampling: {self.downsampled_away:,}")
        if self.class_counts:
            lines.append("  classes: " + ", ".join(f"{k} {v:,}" for k, v in self.class_counts.items()))
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class RawSplit:
    """Labelled functions ready for tokenization; ``labels`` is int64 [N] or uint8 [N, K]."""

    texts: List[str]
    labels: np.ndarray
    ids: List[str]
    label_names: List[str]
    source: str
    report: IngestReport
    groups: Optional[List[str]] = None
    label_policy: str = "class"
    split: Optional[str] = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def subset(self, positions: Sequence[int], split: Optional[str] = None) -> "RawSplit":
        pos = np.asarray(positions, dtype=np.int64)
        labels = self.labels[pos]
        report = replace(self.report, rows_kept=len(pos), bad=dict(self.report.bad),
                         class_counts=_class_counts(labels, self.label_names),
                         notes=self.report.notes + ([f"split '{split}' of this source"] if split else []))
        return RawSplit([self.texts[i] for i in pos], labels, [self.ids[i] for i in pos],
                        list(self.label_names), self.source, report,
                        None if self.groups is None else [self.groups[i] for i in pos],
                        self.label_policy, split or self.split)


@dataclass
class _Spec:
    text_column: str
    label_columns: List[str]
    policy: str
    label_names: Optional[List[str]]
    id_column: Optional[str]
    group_column: Optional[str]

    @property
    def columns(self) -> List[str]:
        cols = [self.text_column, *self.label_columns, self.id_column, self.group_column]
        return list(dict.fromkeys(c for c in cols if c))


def load_split(path: PathLike, *, format: Optional[str] = None, text_column: str = "functionSource",
               label_columns: Optional[Sequence[str]] = None, label_policy: str = "enstack5",
               label_names: Optional[Sequence[str]] = None,
               downsample: Union[None, str, Mapping[str, int]] = None, split: Optional[str] = None,
               seed: int = 0, max_bad_share: float = 0.01, trust_pickle: bool = False,
               id_column: Optional[str] = None, group_column: Optional[str] = None,
               chunk_rows: int = DEFAULT_CHUNK_ROWS) -> RawSplit:
    """Reads one file of labelled functions into a ``RawSplit`` (see the module docstring)."""
    spec = _make_spec(text_column, label_columns, label_policy, label_names, id_column, group_column)
    if not 0.0 <= float(max_bad_share) <= 1.0:
        raise ConfigError(f"data.max_bad_share is {max_bad_share}; give a share between 0 and 1 (e.g. 0.01).")
    if int(chunk_rows) < 1:
        raise ConfigError(f"chunk_rows is {chunk_rows}; give a positive number of rows.")
    path = Path(path)
    reader = formats.open_reader(path, format, trust_pickle=trust_pickle)
    reader.require(spec.columns)
    report = IngestReport(source=str(path))
    scan = Scan(spec, keep_text=downsample is None)
    for chunk in reader.chunks(spec.columns, int(chunk_rows)):
        scan.add(chunk, report)
    kept, names = _label(scan, spec, report)
    _refuse_if_bad(report, max_bad_share)
    if len(kept.rows) == 0:
        raise DataError(f"no usable rows in '{path}'.\n{report.summary()}\nCheck data.text_column, "
                        "data.label_columns and data.label_policy against the file.")
    if downsample is not None:
        kept = _downsample(kept, names, downsample, split, seed, report)
        kept.texts = _collect_texts(reader, spec, kept.rows, int(chunk_rows))
    report.rows_kept = len(kept.rows)
    report.class_counts = _class_counts(kept.labels, names)
    ids = kept.ids if kept.ids is not None else [str(r) for r in kept.rows.tolist()]
    if spec.id_column and len(set(ids)) != len(ids):
        report.notes.append(f"{len(ids) - len(set(ids)):,} duplicate ids in column '{spec.id_column}'")
    return RawSplit(kept.texts, kept.labels, ids, names, str(path), report, kept.groups,
                    spec.policy, _SPLIT_ALIASES.get(str(split), split) if split else None)


def _make_spec(text_column, label_columns, policy, label_names, id_column, group_column) -> _Spec:
    columns = list(VDISC_LABELS if label_columns is None else
                   [label_columns] if isinstance(label_columns, str) else label_columns)
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise ConfigError(f"data.label_columns is {label_columns!r}; give one class column or "
                          "several 0/1 columns (default: the five VDISC CWE columns).")
    if policy not in POLICIES:
        raise ConfigError(f"data.label_policy '{policy}' is not known; use one of {', '.join(POLICIES)}.")
    if policy == "enstack5" and len(columns) == 1:
        policy = "class"
    if policy == "class" and len(columns) != 1:
        raise ConfigError(f"data.label_policy 'class' reads one column of class names, but "
                          f"data.label_columns has {len(columns)}; use enstack5, binary or multilabel.")
    names = None if label_names is None else [str(n) for n in label_names]
    want = {"binary": 2, "enstack5": len(columns), "multilabel": len(columns)}.get(policy)
    if names is not None and (len(set(names)) != len(names) or (want and len(names) != want)):
        raise ConfigError(f"data.label_names {names} must be distinct" +
                          (f" and number {want} for label_policy '{policy}'." if want else "."))
    return _Spec(text_column, columns, policy, names, id_column, group_column)


def _label(scan: Scan, spec: _Spec, report: IngestReport):
    kept = scan.finish()
    if spec.policy == "class":
        return _label_classes(kept, spec.label_names, report)
    flags = kept.labels
    if spec.policy == "multilabel":
        return kept, spec.label_names or list(spec.label_columns)
    if spec.policy == "binary":
        kept.labels = flags.any(axis=1).astype(np.int64)
        return kept, spec.label_names or list(BINARY_LABELS)
    kept.labels = np.argmax(flags, axis=1).astype(np.int64)  # first set flag = highest priority
    return kept, spec.label_names or list(spec.label_columns)


def _label_classes(kept, given: Optional[List[str]], report: IngestReport):
    values = kept.labels
    if given is None:
        distinct = sorted(set(values), key=lambda v: (isinstance(v, str), v))
        names, table = [str(v) for v in distinct], {v: i for i, v in enumerate(distinct)}
    else:
        index = {n: i for i, n in enumerate(given)}
        names = list(given)
        table = {v: index.get(str(v), v if isinstance(v, int) and 0 <= v < len(given) else -1)
                 for v in set(values)}
    labels = np.fromiter((table[v] for v in values), dtype=np.int64, count=len(values))
    for row in kept.rows[labels < 0].tolist():
        report.add_bad("unknown label", row)
    kept = kept.take(np.flatnonzero(labels >= 0))
    kept.labels = labels[labels >= 0]
    return kept, names


def _refuse_if_bad(report: IngestReport, max_bad_share: float) -> None:
    if report.bad_share > max_bad_share:
        raise DataError(
            f"{report.bad_rows:,} of {report.rows_read:,} rows of '{report.source}' are unusable "
            f"({report.bad_share:.2%}, more than max_bad_share {max_bad_share:.2%}): "
            f"{report.bad_detail()}. So many usually means a wrong column or label setting: check "
            "data.text_column, data.label_columns, data.label_policy and data.label_names against "
            "the file; if these rows may simply be dropped, raise data.max_bad_share.")


def _class_counts(labels: np.ndarray, names: List[str]) -> Dict[str, int]:
    if labels.ndim == 2:
        counts = dict(zip(names, labels.sum(axis=0).astype(int).tolist()))
        counts["(no label)"] = int((labels.sum(axis=1) == 0).sum())
        return counts
    return dict(zip(names, np.bincount(labels, minlength=len(names)).tolist()))


def strata_of(labels: np.ndarray, names: List[str], how: str = "priority") -> Tuple[np.ndarray, List[str]]:
    """One stratum per row: the class, or for multilabel the priority class (``none`` last) or bitmask."""
    if labels.ndim == 1:
        return labels, list(names)
    k = labels.shape[1]
    if how == "bitmask":
        bits = labels.astype(np.int64) @ (np.int64(1) << np.arange(k, dtype=np.int64))
        return bits, ["+".join(n for j, n in enumerate(names) if b >> j & 1) or "none"
                      for b in range(1 << k)]
    if how != "priority":
        raise ConfigError(f"multilabel strata '{how}' is not known; use 'priority' or 'bitmask'.")
    return np.where(labels.any(axis=1), np.argmax(labels, axis=1), k), list(names) + ["none"]


def _downsample(kept, names, downsample, split, seed, report):
    strata, strata_names = strata_of(kept.labels, names)
    targets = _targets(downsample, split, strata_names)
    keys = mix64(kept.rows, seed)
    chosen = []
    for c, want in enumerate(targets.tolist()):
        idx = np.flatnonzero(strata == c)
        if want >= 0 and len(idx) > want:
            idx = idx[np.argsort(keys[idx], kind="stable")[:want]]
        elif 0 <= want and len(idx) < want:
            report.notes.append(f"class {strata_names[c]}: asked for {want:,} rows, only "
                                f"{len(idx):,} available; kept all of them")
        chosen.append(idx)
    positions = np.sort(np.concatenate(chosen))
    report.downsampled_away = len(kept.rows) - len(positions)
    return kept.take(positions)


def _targets(downsample, split, strata_names: List[str]) -> np.ndarray:
    if isinstance(downsample, str) and downsample == "paper":
        if strata_names != VDISC_LABELS:
            raise ConfigError("downsample='paper' gives the EnStack paper's per-class counts, for "
                              f"the classes {VDISC_LABELS} (label_policy 'enstack5'); these "
                              f"classes are {strata_names}. Give a mapping class -> count instead.")
        key = _SPLIT_ALIASES.get(str(split))
        if key is None:
            raise ConfigError(f"downsample='paper' needs split='train', 'validation' or 'test' "
                              f"(the paper's counts differ by split); split is {split!r}.")
        return np.array(PAPER_COUNTS[key], dtype=np.int64)
    if not isinstance(downsample, Mapping):
        raise ConfigError(f"downsample is {downsample!r}; give 'paper' or a mapping class name -> count.")
    unknown = [k for k in downsample if k not in strata_names]
    bad = [k for k, v in downsample.items() if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0]
    if unknown or bad:
        raise ConfigError(f"downsample {dict(downsample)}: classes must be among {strata_names} "
                          f"(unknown: {unknown}) and counts non-negative integers (bad: {bad}).")
    targets = np.full(len(strata_names), -1, dtype=np.int64)  # -1: keep all
    for name, count in downsample.items():
        targets[strata_names.index(name)] = int(count)
    return targets


def _collect_texts(reader, spec: _Spec, rows: np.ndarray, chunk_rows: int) -> List[str]:
    """Second pass after downsampling: the texts of the chosen source rows only."""
    texts: List[str] = []
    for chunk in reader.chunks([spec.text_column], chunk_rows, wanted=rows):
        lo, hi = np.searchsorted(rows, [chunk.start, chunk.start + chunk.n])
        column = chunk.columns[spec.text_column]
        texts += [clean_text(column[r - chunk.start])[0] for r in rows[lo:hi].tolist()]
        if hi == len(rows):
            break
    if len(texts) != len(rows) or any(t is None for t in texts):
        raise DataError(f"'{reader.path}' changed while it was read (the second pass found other "
                        "rows than the first); read it again once nothing writes to it.")
    return texts


_MASK64 = (1 << 64) - 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function of each uint64 (arrays wrap mod 2**64 without warnings)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mix64(values: np.ndarray, seed: int) -> np.ndarray:
    """SplitMix64 of (non-negative integer values + a seed-derived offset), vectorised (wraps mod 2**64)."""
    offset = _splitmix64(np.array([int(seed) & _MASK64], dtype=np.uint64))
    return _splitmix64(np.asarray(values, dtype=np.uint64).reshape(-1) + offset)


def split_stratified(raw: RawSplit, ratios: Union[Sequence[float], Mapping[str, float]] = (0.8, 0.1, 0.1),
                     seed: int = 0, *, multilabel_strata: str = "priority") -> Dict[str, RawSplit]:
    """Splits one source into train/validation/test, stratified by label, seeded.

    Per class, each split gets its share rounded to within one row. With ``raw.groups`` (from
    ``group_column``) whole groups go to one split: groups are placed, largest first, where
    their classes are most short of their share, so proportions are close but not exact.
    """
    names, shares = _ratios(ratios)
    strata, _ = strata_of(raw.labels, raw.label_names, multilabel_strata)
    if raw.groups is None:
        assign = _assign_rows(strata, shares, seed)
    else:
        assign = _assign_groups(strata, raw.groups, shares, seed)
    return {name: raw.subset(np.flatnonzero(assign == i), split=name) for i, name in enumerate(names)}


def _ratios(ratios) -> Tuple[List[str], np.ndarray]:
    if isinstance(ratios, Mapping):
        names, values = [str(k) for k in ratios], list(ratios.values())
    else:
        values = list(ratios)
        names = list(SPLITS[:len(values)]) if len(values) in (2, 3) else []
    shares = np.asarray(values, dtype=np.float64)
    if not names or (shares < 0).any() or abs(shares.sum() - 1.0) > 1e-6:
        raise ConfigError(f"split ratios {ratios!r} must be 2 or 3 non-negative shares (train, "
                          "validation[, test]) or a mapping name -> share, summing to 1.")
    return names, shares


def _apportion(n: int, shares: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding: counts summing to n, each within one of n * share."""
    exact = n * shares
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _assign_rows(strata: np.ndarray, shares: np.ndarray, seed: int) -> np.ndarray:
    keys = mix64(np.arange(len(strata)), seed)
    assign = np.empty(len(strata), dtype=np.int64)
    for c in np.unique(strata).tolist():
        idx = np.flatnonzero(strata == c)
        idx = idx[np.argsort(keys[idx], kind="stable")]
        assign[idx] = np.repeat(np.arange(len(shares)), _apportion(len(idx), shares))
    return assign


def _assign_groups(strata: np.ndarray, groups: List[str], shares: np.ndarray, seed: int) -> np.ndarray:
    index: Dict[str, int] = {}
    gid = np.fromiter((index.setdefault(g, len(index)) for g in groups), dtype=np.int64, count=len(groups))
    _, cls = np.unique(strata, return_inverse=True)
    comp = np.zeros((len(index), int(cls.max()) + 1 if len(cls) else 0))
    np.add.at(comp, (gid, cls.reshape(-1)), 1.0)
    keys = [int.from_bytes(hashlib.blake2b(f"{seed}\0{g}".encode(), digest_size=8).digest(), "little")
            for g in index]
    sizes = comp.sum(axis=1)
    order = sorted(range(len(index)), key=lambda g: (-sizes[g], keys[g]))
    deficit = shares[:, None] * comp.sum(axis=0)[None, :]
    choice = np.empty(len(index), dtype=np.int64)
    for g in order:
        score = np.where(shares > 0, deficit @ comp[g], -np.inf)
        choice[g] = s = int(np.argmax(score))
        deficit[s] -= comp[g]
    return choice[gid]
