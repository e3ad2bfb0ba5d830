"""Data: native tokenizers and token stores (C++), ingestion and demo data (Python)."""
from enstack._C.data import Tokenizer, TokenStore, build_token_store, train_sentencepiece
from enstack.data import synthetic
from enstack.data.ingest import IngestReport, RawSplit, load_split, split_stratified

__all__ = ["IngestReport", "RawSplit", "Tokenizer", "TokenStore", "build_token_store", "load_split",
           "split_stratified", "synthetic", "train_sentencepiece"]
