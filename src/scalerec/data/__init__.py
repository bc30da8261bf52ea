"""Data: readers (parsing, movielens, table, ncf), downloads, the synthetic generator, preparation into a
leave-one-out Dataset (prepare), and loading what a config names, through the cache (loading.load_dataset)."""
