"""Publishing: stage a Hub dataset folder (parquet per config and split, card, provenance), upload it, export."""
