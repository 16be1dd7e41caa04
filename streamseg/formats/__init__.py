"""File and wire formats that several parts of streamseg share (records, the encoder's journal)."""
