"""Text -> tokens -> shards -> batches. Needs no model (``mpt.data`` never imports ``mpt.model``)."""

from .dedup import DedupConfig, Deduplicator
from .filters import FilterConfig, first_failed_rule
from .prep import PrepConfig, PrepSummary, prep
from .readers import DataInputError, Document, read_documents
from .shards import Shard, ShardError, ShardIndex, ShardWriter, read_index
from .streaming import Source, StreamConfig, StreamingDataLoader, StreamingDataset

__all__ = ["DataInputError", "DedupConfig", "Deduplicator", "Document", "FilterConfig", "PrepConfig", "PrepSummary",
           "Shard", "ShardError", "ShardIndex", "ShardWriter", "Source", "StreamConfig", "StreamingDataLoader",
           "StreamingDataset", "first_failed_rule", "prep", "read_documents", "read_index"]
