"""The CountBench workflow: batch generation over a prompt file, counting evaluation, plain-vs-NUMINA comparison.

prompt_files: read and check prompts.txt / noun_counts.jsonl. batch: generate every (seed, prompt, mode) once,
resumably, across torchrun ranks (distributed). frames + detectors + evaluate: count objects in every frame and
score them as the NUMINA authors' evaluator does. compare: paired plain-vs-NUMINA statistics.
"""
