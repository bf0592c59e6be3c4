"""Model clients behind one protocol (:mod:`.base`): Chat Completions and the offline model."""
