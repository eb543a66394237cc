"""Training data: the embedded standard-library corpus and ``--data`` files."""

from ufp4_compile.data.corpus import Corpus, TokenStream, default_corpus, load_corpus, train_batch, val_batches

__all__ = ["Corpus", "TokenStream", "default_corpus", "load_corpus", "train_batch", "val_batches"]
