"""FER2013 curation: removal signals, k-fold out-of-fold probabilities, confident-learning relabels,
scoring against FER+ human votes, and the report (experiment `curate_fer2013`)."""
