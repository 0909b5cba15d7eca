"""Dead letters: the record format, the writer used by flows, and the ops commands."""
