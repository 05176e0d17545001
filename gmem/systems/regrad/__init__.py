"""ReGrad (Retrievable Gradients): passages become parameter updates (spec gift-varda-regrad §3).

This package so far holds the data side: the augmented QA format and the four raw-dataset
loaders (qa, raw), the embedded default QA sets (wiki_qa, fanout), the retrieval-augmentation
step (augment) and EM/F1 (metrics). The model and meta-learning come separately.
"""
