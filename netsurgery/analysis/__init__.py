"""Analysis: cost (params, BFLOPs, share-point savings), weight differences, charts, the k sweep."""
