"""Data layer: readers, validation, preprocessing and the on-disk splits format."""
