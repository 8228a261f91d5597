"""The counting world of the tiny demo model: one import for its whole API.

Scenes (scenes.py): KINDS (noun -> colour and shape), kind_of_noun, COLOURS, BACKGROUND, SHAPES,
WorldConfig, Scenes, sample_scenes.
Clips (rendering.py): render (float32 [N, 3, F, H, W] in [-1, 1]), render_uint8, object_masks.
Captions (captions.py): caption, captions, vocabulary_sentences, scene_counts,
scene_colour_of_noun.
"""
from .captions import (  # noqa: F401
    ATTRIBUTES, NUMBER_WORDS, caption, caption_vocabulary, caption_words, captions, count_phrases, kind_noun,
    motion_direction, scene_colour_of_noun, scene_counts, vocabulary_sentences)
from .rendering import object_centres, object_masks, render, render_uint8  # noqa: F401
from .scenes import (  # noqa: F401
    BACKGROUND, COLOURS, DIRECTIONS, KINDS, SHAPES, Kind, Scenes, WorldConfig, kind_of_noun,
    minimum_object_area, sample_scenes)
