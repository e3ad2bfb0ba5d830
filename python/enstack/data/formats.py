"""Readers of raw labelled functions (VDISC HDF5, CSV, JSONL, Parquet, pandas pickles) and
the row checks that turn their values into texts, labels and ids.

Every reader yields ``Chunk``s (consecutive source rows as column -> values), so that ``Scan``
validates and labels rows the same way whatever the format. HDF5, CSV and
JSONL are streamed chunk by chunk (a VDISC file is never loaded whole); Parquet and
pickles are read whole by pandas, which has no row-streaming reader for them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from enstack._C import ConfigError, DataError

FORMATS = ("hdf5", "csv", "jsonl", "parquet", "pickle")
_ALIASES = {"h5": "hdf5", "hdf5": "hdf5", "vdisc": "hdf5", "csv": "csv", "jsonl": "jsonl",
            "json": "jsonl", "parquet": "parquet", "pickle": "pickle", "pkl": "pickle"}
_EXTENSIONS = {".h5": "hdf5", ".hdf5": "hdf5", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl",
               ".parquet": "parquet", ".pkl": "pickle", ".pickle": "pickle"}
_GZIP_OK = ("csv", "jsonl")


@dataclass
class Chunk:
    """Rows ``start .. start + n - 1`` of the source; ``columns[name][i]`` is row ``start + i``."""

    start: int
    n: int
    columns: Dict[str, Any]
    malformed: List[int] = field(default_factory=list)  # offsets of rows that did not parse


def resolve_format(path: Path, fmt: Optional[str]) -> Tuple[str, bool]:
    """(format, gzipped) from an explicit format name or the file's extensions."""
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if fmt is not None:
        name = _ALIASES.get(str(fmt).lower())
        if name is None:
            raise ConfigError(f"data.format '{fmt}' is not known; use one of {', '.join(FORMATS)} "
                              "(or leave it unset to infer it from the file extension).")
    else:
        ext = suffixes[-2] if gzipped and len(suffixes) >= 2 else (suffixes[-1] if suffixes else "")
        name = _EXTENSIONS.get(ext)
        if name is None:
            raise DataError(f"cannot tell the format of '{path}' from its extension; name files "
                            ".h5/.hdf5, .csv, .jsonl/.json, .parquet or .pkl (.gz for csv/jsonl), "
                            "or set data.format.")
    if gzipped and name not in _GZIP_OK:
        raise DataError(f"'{path}' is gzipped, which is supported for CSV and JSONL only; "
                        f"decompress it first (gunzip '{path}').")
    return name, gzipped


def open_reader(path: Path, fmt: Optional[str], *, trust_pickle: bool = False):
    """A reader with ``require(columns)`` and ``chunks(columns, chunk_rows)``."""
    if not path.is_file():
        where = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"data file '{path}' {where} (absolute path: '{path.absolute()}'). "
                        "Check data.train/validation/test, or generate demo data with "
                        "enstack.data.synthetic.write_jsonl().")
    name, gzipped = resolve_format(path, fmt)
    if name == "hdf5":
        return HDF5Reader(path)
    if name == "csv":
        return CSVReader(path, gzipped)
    if name == "jsonl":
        return JSONLReader(path, gzipped)
    return PandasReader(path, name, trust_pickle)


def _missing_columns(path: Path, wanted: Sequence[str], have: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in have]
    if missing:
        raise DataError(f"'{path}' has no column(s) {missing}; it has {sorted(have)}. Set "
                        "data.text_column / data.label_columns (and id_column, group_column) "
                        "to columns of this file.")


class HDF5Reader:
    """Draper VDISC layout: one 1-D dataset per column at the file's root."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._h5 = _import_h5py()

    def require(self, columns: Sequence[str]) -> None:
        with self._open() as f:
            _missing_columns(self.path, columns, [k for k in f.keys() if isinstance(f[k], self._h5.Dataset)])
            lengths = {c: f[c].shape[0] if f[c].shape else 0 for c in columns}
        if len(set(lengths.values())) > 1:
            raise DataError(f"'{self.path}': datasets have different lengths {lengths}; every "
                            "column must have one value per function. The file is damaged or "
                            "not in the VDISC layout.")

    def chunks(self, columns: Sequence[str], chunk_rows: int, wanted=None) -> Iterator[Chunk]:
        """``wanted`` (sorted source rows): chunks holding none of them are not read."""
        with self._open() as f:
            datasets = {c: f[c] for c in columns}
            total = next(iter(datasets.values())).shape[0] if datasets else 0
            for start in range(0, total, chunk_rows):
                stop = min(start + chunk_rows, total)
                if wanted is not None and np.searchsorted(wanted, start) == np.searchsorted(wanted, stop):
                    continue
                cols = {c: _one_column(self.path, c, ds[start:stop]) for c, ds in datasets.items()}
                yield Chunk(start, stop - start, cols)

    def _open(self):
        try:
            return self._h5.File(self.path, "r")
        except OSError as e:
            raise DataError(f"cannot open '{self.path}' as HDF5: {e}. The file is damaged or is "
                            "not HDF5; set data.format if the extension is misleading.") from e


def _one_column(path: Path, name: str, values):
    if values.ndim == 2 and values.shape[1] == 1:
        return values[:, 0]
    if values.ndim != 1:
        raise DataError(f"'{path}': dataset '{name}' has shape {values.shape}; one value per row "
                        "(a 1-D dataset) is expected.")
    return values


def _import_h5py():
    try:
        import h5py
    except ImportError as e:
        raise DataError("reading HDF5 (Draper VDISC) needs h5py: `pip install h5py`.") from e
    return h5py


def _open_text(path: Path, gzipped: bool):
    # surrogateescape keeps each invalid byte visible as a lone surrogate, so that read_text can
    # replace and count it per row (errors="replace" would hide which rows were damaged).
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape", newline="")
    return open(path, "r", encoding="utf-8", errors="surrogateescape", newline="")


class CSVReader:
    """CSV with a header row; values are strings, empty cells are empty strings."""

    def __init__(self, path: Path, gzipped: bool) -> None:
        self.path, self.gzipped = path, gzipped
        # Functions are longer than the csv module's default 128 KiB field limit.
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))

    def require(self, columns: Sequence[str]) -> None:
        with _open_text(self.path, self.gzipped) as f:
            header = next(csv.reader(f), [])
        _missing_columns(self.path, columns, header)

    def chunks(self, columns: Sequence[str], chunk_rows: int, wanted=None) -> Iterator[Chunk]:
        with _open_text(self.path, self.gzipped) as f:
            reader = csv.reader(f)
            where = {name: i for i, name in enumerate(next(reader, []))}
            rows: List[List[str]] = []
            start = 0
            try:
                for row in reader:
                    rows.append(row)
                    if len(rows) == chunk_rows:
                        yield self._chunk(start, rows, columns, where)
                        start, rows = start + len(rows), []
            except csv.Error as e:
                raise DataError(f"'{self.path}' line {reader.line_num}: {e}. The CSV is damaged; "
                                "re-export it with a standard CSV writer (or use JSONL).") from e
            if rows:
                yield self._chunk(start, rows, columns, where)

    @staticmethod
    def _chunk(start: int, rows, columns, where) -> Chunk:
        cols = {c: [r[where[c]] if where[c] < len(r) else None for r in rows] for c in columns}
        return Chunk(start, len(rows), cols)


class JSONLReader:
    """One JSON object per line (blank lines skipped); a ``.json`` array file also works."""

    def __init__(self, path: Path, gzipped: bool) -> None:
        self.path, self.gzipped = path, gzipped

    def require(self, columns: Sequence[str]) -> None:
        pass  # keys are only known while reading; chunks() checks them at the end

    def chunks(self, columns: Sequence[str], chunk_rows: int, wanted=None) -> Iterator[Chunk]:
        seen = set()
        start, batch, bad = 0, [], []
        for record in self._records():
            if isinstance(record, dict):
                seen.update(record)
            else:
                bad.append(len(batch))
                record = {}
            batch.append(record)
            if len(batch) == chunk_rows:
                yield self._chunk(start, batch, bad, columns)
                start, batch, bad = start + len(batch), [], []
        if batch:
            yield self._chunk(start, batch, bad, columns)
        if start + len(batch) > 0:
            _missing_columns(self.path, columns, sorted(seen))

    @staticmethod
    def _chunk(start: int, batch, bad, columns) -> Chunk:
        cols = {c: [r.get(c) for r in batch] for c in columns}
        return Chunk(start, len(batch), cols, list(bad))

    def _records(self) -> Iterator[Any]:
        with _open_text(self.path, self.gzipped) as f:
            first = _peek(f)
            if first == "[":
                try:
                    yield from json.load(f)
                except json.JSONDecodeError as e:
                    raise DataError(f"'{self.path}' is not valid JSON: {e}. Write one object per "
                                    "line (JSONL) so that one bad row does not spoil the file.") from e
                return
            for line in f:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        yield None  # counted as a malformed row


def _peek(f: io.TextIOBase) -> str:
    pos = f.tell()
    head = f.read(64).lstrip()
    f.seek(pos)
    return head[:1]


class PandasReader:
    """Parquet (pandas + pyarrow) and pandas pickles (only when trusted), read whole."""

    def __init__(self, path: Path, kind: str, trust_pickle: bool) -> None:
        self.path, self.kind = path, kind
        if kind == "pickle" and not trust_pickle:
            raise DataError(
                f"refusing to read '{self.path}': unpickling runs whatever code the file holds. "
                "If you made this file or trust its author, pass trust_pickle=True (config: "
                "data.trust_pickle: true). Better, convert it once in a trusted session and use "
                "Parquet from then on: `pandas.read_pickle(PATH).to_parquet(PATH_WITHOUT_EXT + "
                "'.parquet')` (needs pyarrow).")
        self._frame = None

    def require(self, columns: Sequence[str]) -> None:
        _missing_columns(self.path, columns, [str(c) for c in self._df().columns])

    def chunks(self, columns: Sequence[str], chunk_rows: int, wanted=None) -> Iterator[Chunk]:
        df = self._df()
        arrays = {c: df[c].to_numpy() for c in columns}
        for start in range(0, len(df), chunk_rows):
            stop = min(start + chunk_rows, len(df))
            yield Chunk(start, stop - start, {c: a[start:stop] for c, a in arrays.items()})

    def _df(self):
        if self._frame is None:
            self._frame = self._read()
        return self._frame

    def _read(self):
        what = "Parquet" if self.kind == "parquet" else "pandas pickles"
        try:
            import pandas as pd

            df = pd.read_parquet(self.path) if self.kind == "parquet" else pd.read_pickle(self.path)
        except ImportError as e:
            needs = "pandas pyarrow" if self.kind == "parquet" else "pandas"
            raise DataError(f"reading {what} needs {needs}: `pip install {needs}` ({e}).") from e
        except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
            raise DataError(f"cannot read '{self.path}' as {what}: {e}. The file is damaged or "
                            "in another format; set data.format if the extension is misleading.") from e
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"'{self.path}' holds a {type(df).__name__}, not a pandas DataFrame "
                            "with one row per function.")
        df.columns = [str(c) for c in df.columns]
        return df


# --- row checks: values -> (clean value, reason it is unusable or None) ----------------------

_TRUE = frozenset({"1", "true", "t", "yes", "y"})
_FALSE = frozenset({"0", "false", "f", "no", "n"})
_INT = re.compile(r"[+-]?\d+")


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and v != v) or type(v).__name__ in ("NAType", "NaTType")


_SURROGATES = re.compile("[\ud800-\udfff]")


def repair_text(text: str) -> Tuple[str, int]:
    """``text`` with every lone surrogate replaced by U+FFFD, and how many were replaced.

    The one rule for text that is not valid Unicode, wherever it comes from: an invalid UTF-8
    byte (read with surrogateescape, so one U+FFFD per byte) or a JSON escape such as
    ``"\\udc80"``. No tokenizer can encode a lone surrogate (the native core refuses the
    whole batch), and one bad byte should cost one character, not the function."""
    return _SURROGATES.subn("\ufffd", text)


def read_text(v: Any) -> Tuple[Optional[str], Optional[str], int]:
    """(text, why it is unusable or None, characters replaced by U+FFFD) of one text value."""
    if isinstance(v, bytes):  # VDISC stores bytes; np.bytes_ is a bytes too
        v = v.decode("utf-8", errors="surrogateescape")
    if isinstance(v, str):
        if not v.strip():
            return None, "empty text", 0
        text, replaced = repair_text(str(v))
        return text, None, replaced
    return None, ("missing text" if is_missing(v) else "wrong type"), 0


def clean_text(v: Any) -> Tuple[Optional[str], Optional[str]]:
    text, why, _ = read_text(v)
    return text, why


def clean_flag(v: Any) -> Tuple[int, Optional[str]]:
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE or s in _FALSE:
            return int(s in _TRUE), None
        if not s:
            return 0, "missing label"
        try:
            v = float(s)
        except ValueError:
            return 0, "unknown label"
    if is_missing(v):
        return 0, "missing label"
    if isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating)):
        return (int(v), None) if v in (0, 1) else (0, "unknown label")
    return 0, "wrong type"


def clean_class(v: Any) -> Tuple[Any, Optional[str]]:
    """A class name (str) or index (int); integer-looking strings (CSV) become ints."""
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    if isinstance(v, str):
        s = repair_text(v.strip())[0]  # class names end up in JSON and the native core, both strict UTF-8
        if not s:
            return None, "missing label"
        return (int(s) if _INT.fullmatch(s) else s), None
    if is_missing(v):
        return None, "missing label"
    if isinstance(v, (bool, int, np.bool_, np.integer)):
        return int(v), None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v), None
    return None, "wrong type"


def clean_key(v: Any, what: str) -> Tuple[Optional[str], Optional[str]]:
    """An id or group value as a string."""
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = int(v)
    if is_missing(v) or str(v) == "":
        return None, f"missing {what}"
    return repair_text(str(v))[0], None


def _flag_column(values: Any) -> Tuple[np.ndarray, Optional[List[Optional[str]]]]:
    if isinstance(values, np.ndarray) and values.dtype.kind in "bui":  # VDISC: vectorised
        ok = (values == 0) | (values == 1)
        reasons = None if ok.all() else [None if o else "unknown label" for o in ok.tolist()]
        return np.where(ok, values, 0).astype(np.uint8), reasons
    pairs = [clean_flag(v) for v in values]
    return np.array([p[0] for p in pairs], dtype=np.uint8), [p[1] for p in pairs]


def _merge(why: List[Optional[str]], more: Optional[Sequence[Optional[str]]]) -> None:
    for i, reason in enumerate(more or ()):
        if reason is not None and why[i] is None:
            why[i] = reason


@dataclass
class Kept:
    """Usable rows so far: source row numbers and what was read for them."""

    rows: np.ndarray
    labels: Any  # uint8 [n, K] flags, or a list of class values until they are mapped
    texts: Optional[List[str]]
    ids: Optional[List[str]]
    groups: Optional[List[str]]

    def take(self, positions: np.ndarray) -> "Kept":
        pick = (lambda xs: None if xs is None else [xs[i] for i in positions.tolist()])
        labels = self.labels[positions] if isinstance(self.labels, np.ndarray) else pick(self.labels)
        return Kept(self.rows[positions], labels, pick(self.texts), pick(self.ids), pick(self.groups))


class Scan:
    """First pass: checks each chunk's rows, counts the bad ones, keeps the usable ones."""

    def __init__(self, spec, keep_text: bool) -> None:
        self.spec, self.keep_text = spec, keep_text
        self.flags = spec.policy != "class"
        self.rows: List[np.ndarray] = []
        self.labels: List[Any] = []
        self.texts: Optional[List[str]] = [] if keep_text else None
        self.ids: Optional[List[str]] = [] if spec.id_column else None
        self.groups: Optional[List[str]] = [] if spec.group_column else None

    def add(self, chunk: Chunk, report) -> None:
        spec, n = self.spec, chunk.n
        read = [read_text(v) for v in chunk.columns[spec.text_column]]
        texts, why = [r[0] for r in read], [r[1] for r in read]
        for i in chunk.malformed:
            why[i] = "malformed row"
        labels = self._labels(chunk, why)
        ids = self._keys(chunk, spec.id_column, "id", why)
        groups = self._keys(chunk, spec.group_column, "group", why)
        report.rows_read += n
        usable = np.array([r is None for r in why], dtype=bool)
        for i in np.flatnonzero(~usable).tolist():
            report.add_bad(why[i], chunk.start + i)
        for i in np.flatnonzero(usable).tolist():
            if read[i][2]:
                report.add_replaced(chunk.start + i)
        keep = np.flatnonzero(usable)
        if spec.policy == "enstack5":
            vulnerable = labels[keep].any(axis=1)
            report.filtered += int((~vulnerable).sum())
            keep = keep[vulnerable]
        self._store(chunk.start, keep, labels, texts, ids, groups)

    def _labels(self, chunk: Chunk, why: List[Optional[str]]):
        columns = [chunk.columns[c] for c in self.spec.label_columns]
        if not self.flags:
            values, reasons = map(list, zip(*map(clean_class, columns[0]))) if chunk.n else ([], [])
            _merge(why, reasons)
            return values
        flags = np.zeros((chunk.n, len(columns)), dtype=np.uint8)
        for k, column in enumerate(columns):
            flags[:, k], reasons = _flag_column(column)
            _merge(why, reasons)
        return flags

    @staticmethod
    def _keys(chunk: Chunk, column: Optional[str], what: str, why) -> Optional[List[Optional[str]]]:
        if not column:
            return None
        pairs = [clean_key(v, what) for v in chunk.columns[column]]
        _merge(why, [p[1] for p in pairs])
        return [p[0] for p in pairs]

    def _store(self, start: int, keep: np.ndarray, labels, texts, ids, groups) -> None:
        idx = keep.tolist()
        self.rows.append(start + keep.astype(np.int64))
        self.labels.append(labels[keep] if self.flags else [labels[i] for i in idx])
        for out, values in ((self.texts, texts), (self.ids, ids), (self.groups, groups)):
            if out is not None:
                out.extend(values[i] for i in idx)

    def finish(self) -> Kept:
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.int64)
        if self.flags:
            k = len(self.spec.label_columns)
            labels = np.concatenate(self.labels) if self.labels else np.zeros((0, k), dtype=np.uint8)
        else:
            labels = [v for part in self.labels for v in part]
        return Kept(rows, labels, self.texts, self.ids, self.groups)
