"""The counting world of the tiny demo model: one import for its whole API.

Scenes (scenes.py): COLOURS, BACKGROUND, SHAPES, WorldConfig, Scenes, sample_scenes.
Clips (rendering.py): render (float32 [N, 3, F, H, W] in [-1, 1]), render_uint8, object_masks.
Captions (captions.py): caption, captions, vocabulary_sentences, scene_counts,
scene_colour_of_noun.
"""
from .captions import (  # noqa: F401
    NUMBER_WORDS, caption, caption_vocabulary, caption_words, captions, motion_direction,
    scene_colour_of_noun, scene_counts, vocabulary_sentences)
from .rendering import object_centres, object_masks, render, render_uint8  # noqa: F401
from .scenes import (  # noqa: F401
    BACKGROUND, COLOURS, DIRECTIONS, SHAPES, Scenes, WorldConfig, minimum_object_area,
    sample_scenes)
