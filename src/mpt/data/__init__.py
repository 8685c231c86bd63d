"""Text -> tokens -> shards -> batches. Needs no model (``mpt.data`` never imports ``mpt.model``).

Names load on first use, so ``import mpt.data`` pulls in neither torch nor transformers.
"""

from mpt._lazy import lazy_exports

_EXPORTS = {"DedupConfig": ".dedup", "Deduplicator": ".dedup", "FilterConfig": ".filters",
            "first_failed_rule": ".filters", "PrepConfig": ".prep", "PrepSummary": ".prep", "prep": ".prep",
            "DataInputError": ".readers", "Document": ".readers", "read_documents": ".readers",
            "Shard": ".shards", "ShardError": ".shards", "ShardIndex": ".shards", "ShardWriter": ".shards",
            "read_index": ".shards", "Source": ".streaming", "StreamConfig": ".streaming",
            "StreamingDataLoader": ".streaming", "StreamingDataset": ".streaming"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
