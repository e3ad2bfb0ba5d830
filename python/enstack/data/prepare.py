"""``enstack data prepare``: raw data -> one token store per split, built once.

For each split the store ``<output_dir>/data/<split>.tokens`` is written with a
sidecar ``<split>.json`` (label names, example ids, the store's fingerprint and
the *source key*: a hash of the ingested texts and labels, the tokenizer and
max_length). A later prepare whose source key matches reuses the store without
tokenizing again.

``data.train: demo`` means the embedded synthetic dataset (``enstack.data.synthetic``),
generated deterministically under ``<output_dir>/data/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from enstack._C import ConfigError, DataError
from enstack._C.data import Tokenizer, TokenStore, build_token_store, train_sentencepiece
from enstack.data import synthetic
from enstack.data.ingest import RawSplit, load_split, split_stratified

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
    out_dir = data_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = load_raw_splits(cfg)
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


def _demo_file(cfg) -> Path:
    path = data_dir(cfg) / "demo.jsonl"
    if not path.exists():
        synthetic.write_jsonl(path, DEMO_EXAMPLES, seed=cfg.run.seed)
        log.info("wrote %d synthetic demo functions to %s", DEMO_EXAMPLES, path)
    return path


def resolve_tokenizer(cfg, train: RawSplit) -> Tokenizer:
    spec = cfg.model.tokenizer
    kind = getattr(spec, "kind", "auto") if spec is not None else "auto"
    path = getattr(spec, "path", None) if spec is not None else None
    if path:
        return Tokenizer.from_pretrained(str(path))
    if kind == "sentencepiece" and cfg.model.from_scratch:
        model_path = Path(cfg.run.output_dir) / "tokenizer" / "spm.model"
        key_path = model_path.with_suffix(".json")
        key = _texts_key(train.texts) + f"-{spec.vocab_size}"
        if not (model_path.exists() and key_path.exists() and json.loads(key_path.read_text()).get("key") == key):
            model_path.parent.mkdir(parents=True, exist_ok=True)
            log.info("training a %d-piece SentencePiece tokenizer on %d functions", spec.vocab_size, len(train))
            train_sentencepiece(train.texts, str(model_path), vocab_size=int(spec.vocab_size))
            key_path.write_text(json.dumps({"key": key}))
        return Tokenizer.from_pretrained(str(model_path))
    return _model_tokenizer(cfg)


def run_tokenizer(cfg) -> Tokenizer:
    """The tokenizer ``prepare`` uses for this run, loaded without training one (for new inputs)."""
    spec = cfg.model.tokenizer
    if spec is not None and spec.path:
        return Tokenizer.from_pretrained(str(spec.path))
    if spec is not None and spec.kind == "sentencepiece" and cfg.model.from_scratch:
        model_path = Path(cfg.run.output_dir) / "tokenizer" / "spm.model"
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


def _build_split(name: str, split: RawSplit, tokenizer: Tokenizer, max_length: int, out_dir: Path,
                 num_threads: int) -> PreparedSplit:
    if len(split) == 0:
        raise DataError(f"the {name} split is empty; check data.{name} or data.split.")
    store_path = out_dir / f"{name}.tokens"
    meta_path = out_dir / f"{name}.json"
    key = f"{_texts_key(split.texts, split.labels)}-{tokenizer.identity}-{max_length}"
    if store_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
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
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta))
    tmp.replace(meta_path)
    log.debug("built %s: %d functions, fingerprint %s", store_path, len(split), info["fingerprint"])
    return PreparedSplit(name, store_path, split.label_names, split.ids, info["fingerprint"], False)
