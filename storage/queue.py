"""CorpusQueue: the one front of the corpus store, documents in, token windows out, the cursor.

Every caller holds a CorpusQueue; its methods live in one module per concern and are gathered
here as mixins over one Database:

- documents.py   DocumentStore: the tokenizer, add_documents (with the staleness check for a
                 version that `continues` another), record_skip, record_removed
- versions.py    FileVersions: seen, seen_many, latest_versions (the version a change is read
                 against), newest_under (the members stored for an archive)
- reads.py       StreamReads: the held-out split, read_windows, read_windows_at, sample_replay,
                 holdout_set, read_tokens, stream_end, document_identity
- withdrawal.py  Withdrawal: forget, stream_mask, withdrawal_generation
- training_state.py  TrainingState: the cursor and its one writer, the checkpoint rows, stats
- evaluations.py Evaluations: the history of evaluations on the held-out set
- holdout_blocks.py HoldoutBlocks: settle_holdout, held_out_blocks (the held-out blocks per source)
- document_text.py DocumentText: document_versions (every version of a file, for `show`)
- corpus_rules.py CorpusRules: count_lines, near_duplicate_candidates, record_signatures (the corpus rules)

Each public method is one transaction through db.Database unless its docstring says otherwise.
Not a place for queries: a new one goes to the module of its concern. Knows nothing of the
engine or the crawler.
"""

from __future__ import annotations

from .corpus_rules import CorpusRules
from .db import ClosesOnExit, Database
from .document_text import DocumentText
from .documents import DocumentStore
from .evaluations import Evaluations
from .holdout_blocks import HoldoutBlocks
from .reads import StreamReads
from .training_state import TrainingState
from .versions import FileVersions
from .withdrawal import Withdrawal


class CorpusQueue(DocumentStore, FileVersions, StreamReads, Withdrawal, TrainingState, Evaluations, DocumentText,
                  CorpusRules, HoldoutBlocks, ClosesOnExit):
    """The corpus store's interface; each method is one transaction unless it says otherwise."""

    def __init__(self, database: Database):
        self.database = database
        self.chunk_tokens = database.config.chunk_tokens

    def close(self) -> None:
        """Closes the database this queue was given. Idempotent."""
        self.database.close()
