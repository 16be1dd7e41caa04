"""The pipeline's stages, one module each, in data-flow order:
:mod:`.decode` -> :mod:`.batch` -> :mod:`.infer` -> :mod:`.render` -> :mod:`.encode`,
with :mod:`.maskwriter` beside the encoder."""
