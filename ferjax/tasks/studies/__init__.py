"""Studies: one recipe trained on several arms and seeds, compared on the untouched test split."""
