"""Recording Gymnasium games into datasets, the datasets themselves, latent caches, styles and
object finders; export to and import from Minari. See docs/recording.md."""

from worldsdk.data.actions import action_spec_from_space, encode_actions
from worldsdk.data.datasets import ClipDataset, FrameDataset, collate_clips
from worldsdk.data.latents import LatentClipDataset, autoencoder_fingerprint, build_latent_cache
from worldsdk.data.minari_io import export_minari, import_minari
from worldsdk.data.objects import ball_recall, detect_style, find_ball, find_balls, find_paddle, find_paddles, paddle_motion
from worldsdk.data.policies import BreakoutPolicy, Policy, PongPolicy, RandomPolicy, make_policy
from worldsdk.data.recorder import game_name, make_env, record
from worldsdk.data.resize import resize_frame, resize_frames
from worldsdk.data.splits import split_of
from worldsdk.data.store import CorruptShardError, DatasetMeta, Episode, EpisodeRecord, EpisodeStore
from worldsdk.data.styles import STYLES, Style, apply_style, prompt_for, register_style

__all__ = [
    "action_spec_from_space", "encode_actions",
    "ClipDataset", "FrameDataset", "collate_clips",
    "LatentClipDataset", "autoencoder_fingerprint", "build_latent_cache",
    "export_minari", "import_minari",
    "ball_recall", "detect_style", "find_ball", "find_balls", "find_paddle", "find_paddles", "paddle_motion",
    "BreakoutPolicy", "Policy", "PongPolicy", "RandomPolicy", "make_policy",
    "game_name", "make_env", "record",
    "resize_frame", "resize_frames",
    "split_of",
    "CorruptShardError", "DatasetMeta", "Episode", "EpisodeRecord", "EpisodeStore",
    "STYLES", "Style", "apply_style", "prompt_for", "register_style",
]
