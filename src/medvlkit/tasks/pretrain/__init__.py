"""``medvlkit pretrain``: retrain lite's heads (and write its training manifest) from the shared data."""
