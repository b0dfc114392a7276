"""Domain question answering (Dr. LLaMA): PubMedQA loading and splits, QA JSONL files."""

from domainlm.qa.data import (
    LABELS,
    QAItem,
    QASplits,
    load_pubmedqa,
    load_qa_dir,
    read_qa_jsonl,
    write_qa_jsonl,
)

__all__ = ["LABELS", "QAItem", "QASplits", "load_pubmedqa", "load_qa_dir", "read_qa_jsonl", "write_qa_jsonl"]
