"""Text -> tokens -> shards -> batches. Needs no model (``mpt.data`` never imports ``mpt.model``).

Names load on first use, so ``import mpt.data`` pulls in neither torch nor transformers.
"""

from mpt._lazy import lazy_exports

# Eager, because the function shares its submodule's name: importing ``mpt.data.prep`` from anywhere
# would otherwise leave ``mpt.data.prep`` bound to the module. It needs numpy, not torch.
from .prep import PrepConfig, PrepSummary, prep

_EXPORTS = {"DedupConfig": ".dedup", "Deduplicator": ".dedup", "FilterConfig": ".filters",
            "first_failed_rule": ".filters", "DataInputError": ".readers", "Document": ".readers",
            "read_documents": ".readers",
            "Shard": ".shards", "ShardError": ".shards", "ShardIndex": ".shards", "ShardWriter": ".shards",
            "read_index": ".shards", "Source": ".streaming", "StreamConfig": ".streaming",
            "StreamingDataLoader": ".streaming", "StreamingDataset": ".streaming"}
__all__ = ["PrepConfig", "PrepSummary", "prep", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
