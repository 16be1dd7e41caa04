"""Following objects over time: track ids by mask (:mod:`.tracker`)."""
