"""Data: native tokenizers and token stores (C++), ingestion and demo data (Python)."""
from enstack.data.ingest import RawSplit, IngestReport, load_split, split_stratified
from enstack.data import synthetic
