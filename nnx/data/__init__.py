"""MNIST: readers for IDX and CSV, the downloader, and the train/validation/test splits."""
