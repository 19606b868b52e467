"""FER+ human votes (Barsoum et al. 2016) as FER2013 labels: the strict majority, or the vote
distribution over FER2013's seven classes."""
from __future__ import annotations

import numpy as np

# FER+ vote columns (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt)
# mapped to FER2013 label indices; contempt has no FER2013 class.
_FERPLUS_TO_FER = np.array([6, 3, 5, 4, 0, 1, 2, -1])


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """FER2013 label of the strict FER+ majority among the 8 emotions, -1 for ties, unknown,
    not-a-face, contempt, or rows without votes."""
    votes = votes.astype(np.int32)
    emo = votes[:, :8]
    top = emo.max(1)
    winner = emo.argmax(1)
    unique = (emo == top[:, None]).sum(1) == 1
    beats_rest = top > votes[:, 8:].max(1)
    ok = (votes.min(1) >= 0) & (top > 0) & unique & beats_rest
    return np.where(ok, _FERPLUS_TO_FER[winner], -1)


def ferplus_distribution(votes: np.ndarray) -> np.ndarray:
    """[N, 7] float32: each row's FER+ votes over the 7 FER2013 classes, normalised to sum to 1
    (contempt, unknown and not-a-face votes dropped; Barsoum et al.'s probabilistic label
    distribution restricted to FER2013's classes). A row with no such vote is an error."""
    votes = np.asarray(votes).astype(np.float32)
    dist = np.zeros((len(votes), 7), np.float32)
    for column, label in enumerate(_FERPLUS_TO_FER):
        if label >= 0:
            dist[:, label] = np.maximum(votes[:, column], 0)
    total = dist.sum(1, keepdims=True)
    if (total <= 0).any():
        raise ValueError(f"{int((total <= 0).sum())} rows have no FER+ vote for a FER2013 class "
                         f"(first at index {int(np.flatnonzero(total[:, 0] <= 0)[0])})")
    return dist / total
