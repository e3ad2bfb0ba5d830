"""``enstack data prepare``: raw data -> one token store per split, built once.

For each split the store ``<output_dir>/data/<split>.tokens`` is written with a
sidecar ``<split>.json`` (label names, example ids, the store's fingerprint and
the *source key*: a hash of the ingested texts and labels, the tokenizer and
max_length). A later prepare whose source key matches reuses the store without
tokenizing again.

``data.train: demo`` means the embedded synthetic dataset (``enstack.data.synthetic``),
generated deterministically under ``<output_dir>/data/`` with a record of its row count and
hash beside it; a generated file that no longer matches its record is generated again.

Refused here, before anything is tokenized or trained: a ``run.output_dir`` that cannot hold
the run, labels outside the model's outputs, and training data with a single class. The
run's SentencePiece tokenizer is trained once and never retrained: the run's checkpoints
depend on its ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from enstack._C import ConfigError, DataError
from enstack._C.data import Tokenizer, TokenStore, build_token_store, train_sentencepiece
from enstack.data import synthetic
from enstack.data.ingest import RawSplit, load_split, split_stratified
from enstack.files import atomic_write, count_and_hash

log = logging.getLogger("enstack")

DEMO_EXAMPLES = 3000
SPLITS = ("train", "validation", "test")


@dataclass
class PreparedSplit:
    name: str
    store_path: Path
    label_names: List[str]
    ids: List[str]
    fingerprint: str
    reused: bool

    def open(self) -> TokenStore:
        return TokenStore(self.store_path)


def data_dir(cfg) -> Path:
    return Path(cfg.run.output_dir) / "data"


def prepare(cfg, progress: bool = True) -> Dict[str, PreparedSplit]:
    """Builds (or reuses) the token stores of every split of ``cfg``."""
    out_dir = make_data_dir(cfg)
    raw = load_raw_splits(cfg)
    check_labels(cfg, raw)
    tokenizer = resolve_tokenizer(cfg, raw["train"])
    max_length = int(cfg.model.max_length)
    prepared = {}
    bar = _progress(len(raw), progress)
    for name, split in raw.items():
        prepared[name] = _build_split(name, split, tokenizer, max_length, out_dir, cfg.run.num_threads)
        if bar is not None:
            bar.set_postfix_str(f"{name}: {len(split):,} functions{' (reused)' if prepared[name].reused else ''}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return prepared


def make_data_dir(cfg) -> Path:
    """Creates ``<output_dir>/data``: the first thing a run writes, so a ``run.output_dir`` that
    cannot hold a run is refused here, by its config key, rather than as a raw OSError later."""
    out_dir = data_dir(cfg)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(_output_dir_problem(Path(cfg.run.output_dir), e)) from None
    # access() also says no on a read-only file system, where root's permissions do not help.
    if not os.access(out_dir, os.W_OK):
        raise ConfigError(_output_dir_problem(Path(cfg.run.output_dir), None))
    return out_dir


def _output_dir_problem(root: Path, error: Optional[OSError]) -> str:
    todo = "Set run.output_dir to a writable directory (on the command line: --set run.output_dir=DIR)."
    blocker = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    if blocker == root:
        return f"run.output_dir '{root}' is a file, not a directory. {todo}"
    if blocker is not None:
        return f"run.output_dir '{root}' cannot be created: '{blocker}' is a file, not a directory. {todo}"
    why = (error.strerror or str(error)) if error is not None else "no write permission or a read-only file system"
    return f"run.output_dir '{root}' is not writable ({why}). {todo}"


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="token stores", unit="split")


def load_raw_splits(cfg) -> Dict[str, RawSplit]:
    d = cfg.data
    common = dict(format=None if d.format == "auto" else d.format, text_column=d.text_column,
                  label_columns=d.label_columns, label_policy=d.label_policy, label_names=d.label_names,
                  seed=cfg.run.seed, max_bad_share=d.max_bad_share, trust_pickle=d.trust_pickle,
                  id_column=d.id_column, group_column=d.group_column)
    train_path = d.train
    if str(train_path) == "demo":
        train_path = _demo_file(cfg)
        common.update(format="jsonl", text_column="func", label_columns=["label"], label_policy="class",
                      label_names=None, id_column="id", group_column=None)
    if train_path is None:
        raise ConfigError("data.train is not set; give the training file (or `demo` for the embedded data).")
    if d.split:
        whole = load_split(train_path, downsample=d.downsample, **common)
        log.info("ingested %s", whole.report.summary())
        return split_stratified(whole, list(d.split), seed=cfg.run.seed)
    splits = {}
    for name in SPLITS:
        path = getattr(d, name)
        if path is None:
            if name == "train":
                raise ConfigError("data.train is not set.")
            continue
        splits[name] = load_split(path, downsample=d.downsample, split=name, **common)
        log.info("ingested %s: %s", name, splits[name].report.summary())
    return splits


def check_labels(cfg, raw: Dict[str, RawSplit]) -> None:
    """Refuses labels the model cannot learn from, before a tokenizer is trained or a step taken:
    labels outside its outputs (an IndexError mid-training otherwise) and a single training class
    (a 1-output model, or one that only ever sees one class, trains to loss 0 and learns nothing)."""
    train = raw["train"]
    num_labels = int(cfg.model.num_labels or len(train.label_names))
    for name, split in raw.items():
        _check_label_range(name, split, num_labels, cfg.data.id_column)
    if len(train) and not train.multilabel and len(np.unique(train.labels)) < 2:
        raise DataError(
            f"the training data '{train.source}' holds a single class ({_label_counts(train)}): a classifier "
            "needs at least two and learns nothing from one. Check data.label_columns and data.label_policy "
            "(enstack5 keeps vulnerable functions only; binary keeps the safe ones as a class), or add "
            "functions of the other classes.")


def _check_label_range(name: str, split: RawSplit, num_labels: int, id_column: Optional[str]) -> None:
    if split.multilabel:
        if split.labels.shape[1] != num_labels:
            raise DataError(f"'{split.source}' ({name} split) has {split.labels.shape[1]} label columns but "
                            f"model.num_labels is {num_labels}; set model.num_labels to {split.labels.shape[1]} "
                            "or leave it unset.")
        return
    bad = np.flatnonzero((split.labels < 0) | (split.labels >= num_labels))
    if len(bad) == 0:
        return
    where = f"ids (data.id_column '{id_column}')" if id_column else "rows"
    first = ", ".join(split.ids[i] for i in bad[:5].tolist())
    raise DataError(
        f"'{split.source}' ({name} split): {len(bad):,} functions have a label outside 0..{num_labels - 1}, the "
        f"outputs of a model with model.num_labels {num_labels} (first {where}: {first}). Label counts: "
        f"{_label_counts(split)}. Set model.num_labels to {int(split.labels.max()) + 1} or leave it unset (one "
        "output per class of the data), or list the classes to keep in data.label_names.")


def _label_counts(split: RawSplit) -> str:
    counts = np.bincount(split.labels[split.labels >= 0], minlength=len(split.label_names))
    names = list(split.label_names) + [str(i) for i in range(len(split.label_names), len(counts))]
    return ", ".join(f"{names[i]} (label {i}) {c:,}" for i, c in enumerate(counts.tolist()) if c)


def changed_splits(cfg) -> Dict[str, str]:
    """The splits whose token store under ``<output_dir>/data`` was prepared from other data than
    ``cfg`` gives now (other texts or labels, tokenizer or max_length), each with a few words on
    what changed; empty when every prepared split matches. Trains and builds nothing, so eval and
    predict can refuse to score a run's checkpoints on data they were not prepared for."""
    raw = load_raw_splits(cfg)
    tokenizer = run_tokenizer(cfg)
    max_length = int(cfg.model.max_length)
    changed = {}
    for name, split in raw.items():
        meta = _read_meta(data_dir(cfg) / f"{name}.json")
        if meta is None or meta.get("source_key") == _source_key(split, tokenizer, max_length):
            continue
        before = meta.get("source")
        changed[name] = (f"prepared from '{before}', the config gives '{split.source}'" if before != split.source
                         else f"'{split.source}' (or model.max_length) changed since it was prepared")
    return changed


def _demo_file(cfg) -> Path:
    path = make_data_dir(cfg) / "demo.jsonl"
    record = path.with_name(path.name + ".record.json")
    wanted = {"generator": "enstack.data.synthetic.write_jsonl", "rows": DEMO_EXAMPLES, "seed": int(cfg.run.seed)}
    problem = _generated_file_problem(path, record, wanted)
    if problem is None:
        return path
    if path.exists():
        # A kill or a full disk while an older version wrote it in place could have truncated it.
        log.warning("generating the demo data %s again: %s", path, problem)
    synthetic.write_jsonl(path, DEMO_EXAMPLES, seed=wanted["seed"])
    lines, digest = count_and_hash(path)
    # Written after the data: a record exists only for a file that was written whole.
    atomic_write(record, lambda f: f.write(json.dumps({**wanted, "lines": lines, "sha256": digest}).encode()))
    log.info("wrote %d synthetic demo functions to %s", DEMO_EXAMPLES, path)
    return path


def _generated_file_problem(path: Path, record: Path, wanted: Dict[str, object]) -> Optional[str]:
    """Why a generated file may not be reused (None: it may): it is missing, has no record, was
    generated with other settings, or its rows or bytes differ from the record."""
    if not path.exists():
        return "missing"
    try:
        recorded = json.loads(record.read_text())
    except (OSError, ValueError):
        return f"no readable record {record.name} of how it was generated"
    got = {k: recorded.get(k) for k in wanted}
    if got != wanted:
        return f"generated with other settings ({got}, want {wanted})"
    lines, digest = count_and_hash(path)
    if (lines, digest) != (recorded.get("lines"), recorded.get("sha256")):
        return (f"it has {lines} lines and sha256 {digest[:12]}..., its record says {recorded.get('lines')} "
                f"lines and {str(recorded.get('sha256'))[:12]}... (truncated or modified)")
    return None


def resolve_tokenizer(cfg, train: RawSplit) -> Tokenizer:
    """The run's tokenizer; a from-scratch SentencePiece one is trained on ``train`` the first time."""
    spec = cfg.model.tokenizer
    kind = getattr(spec, "kind", "auto") if spec is not None else "auto"
    path = getattr(spec, "path", None) if spec is not None else None
    if path:
        return Tokenizer.from_pretrained(str(path))
    if kind == "sentencepiece" and cfg.model.from_scratch:
        model_path = _spm_path(cfg)
        key_path = model_path.with_suffix(".json")
        key = _texts_key(train.texts) + f"-{spec.vocab_size}"
        recorded = _recorded_key(key_path) if model_path.exists() else None
        if recorded is None:
            model_path.parent.mkdir(parents=True, exist_ok=True)
            key_path.unlink(missing_ok=True)  # the key is the commit mark: never beside a half-trained model
            log.info("training a %d-piece SentencePiece tokenizer on %d functions", spec.vocab_size, len(train))
            train_sentencepiece(train.texts, str(model_path), vocab_size=int(spec.vocab_size))
            atomic_write(key_path, lambda f: f.write(json.dumps({"key": key}).encode()))
        elif recorded != key:
            # Retraining would change the ids under the run's checkpoints (and eval would score
            # them with a tokenizer they never saw), so the run keeps the one it was trained with.
            log.warning("the run's tokenizer %s was trained on other training data or another "
                        "model.tokenizer.vocab_size than the config gives now; the run keeps it. Train "
                        "into a new run.output_dir for a tokenizer of the new data.", model_path)
        return Tokenizer.from_pretrained(str(model_path))
    return _model_tokenizer(cfg)


def _spm_path(cfg) -> Path:
    return Path(cfg.run.output_dir) / "tokenizer" / "spm.model"


def _recorded_key(key_path: Path) -> Optional[str]:
    try:
        return json.loads(key_path.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def run_tokenizer(cfg) -> Tokenizer:
    """The tokenizer ``prepare`` uses for this run, loaded without training one (for new inputs)."""
    spec = cfg.model.tokenizer
    if spec is not None and spec.path:
        return Tokenizer.from_pretrained(str(spec.path))
    if spec is not None and spec.kind == "sentencepiece" and cfg.model.from_scratch:
        model_path = _spm_path(cfg)
        if not model_path.exists():
            raise DataError(f"this run's tokenizer {model_path} has not been trained yet; run `enstack data "
                            "prepare CONFIG` (or train) first.")
        return Tokenizer.from_pretrained(str(model_path))
    return _model_tokenizer(cfg)


def _model_tokenizer(cfg) -> Tokenizer:
    from enstack import hub

    # A Hugging Face id resolves to its downloaded snapshot (config, tokenizer files, weights).
    source = hub.resolve(str(cfg.model.name_or_path), from_scratch=cfg.model.from_scratch)
    if not source.is_dir():
        raise ConfigError(
            f"model.name_or_path '{source}' is not a model directory, so its tokenizer cannot be read. "
            "Give a directory with vocab.json + merges.txt or tokenizer.json, or set model.tokenizer.path.")
    return Tokenizer.from_pretrained(str(source))


def _texts_key(texts: List[str], labels: Optional[np.ndarray] = None) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def _source_key(split: RawSplit, tokenizer: Tokenizer, max_length: int) -> str:
    return f"{_texts_key(split.texts, split.labels)}-{tokenizer.identity}-{max_length}"


def _read_meta(meta_path: Path) -> Optional[Dict]:
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None


def _build_split(name: str, split: RawSplit, tokenizer: Tokenizer, max_length: int, out_dir: Path,
                 num_threads: int) -> PreparedSplit:
    if len(split) == 0:
        raise DataError(f"the {name} split is empty; check data.{name} or data.split.")
    store_path = out_dir / f"{name}.tokens"
    meta_path = out_dir / f"{name}.json"
    key = _source_key(split, tokenizer, max_length)
    if store_path.exists() and meta_path.exists():
        meta = _read_meta(meta_path) or {}  # an unreadable sidecar means: build again
        if meta.get("source_key") == key:
            try:
                store = TokenStore(str(store_path))
                if store.fingerprint == meta.get("fingerprint"):
                    return PreparedSplit(name, store_path, meta["label_names"], meta["ids"], store.fingerprint, True)
            except DataError as e:
                log.warning("rebuilding %s: %s", store_path, e)
    info = build_token_store(str(store_path), tokenizer, split.texts, split.labels, max_length,
                             num_threads=int(num_threads or 0))
    meta = {"split": name, "source": split.source, "source_key": key, "fingerprint": info["fingerprint"],
            "label_names": split.label_names, "label_policy": split.label_policy, "count": len(split),
            "ids": split.ids}
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))
    log.debug("built %s: %d functions, fingerprint %s", store_path, len(split), info["fingerprint"])
    return PreparedSplit(name, store_path, split.label_names, split.ids, info["fingerprint"], False)
