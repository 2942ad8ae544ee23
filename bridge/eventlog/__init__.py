"""The event log as an operator sees it: its entries, finding them (query), replaying them (replay),
trimming the log (retention) and its JSONL form (export)."""
