"""Tools around the pipeline: synthetic video with exact ground truth (:mod:`.synth`), COCO
evaluation (:mod:`.evaluate`) and training of the shipped small model (:mod:`.train`)."""
